from concurrent.futures import ThreadPoolExecutor

from fastapi.testclient import TestClient


def test_initial_data(client: TestClient) -> None:
    names = [hero["name"] for hero in client.get("/heroes/").json()]
    assert "Deadpond" in names


def test_create_read_update_delete(client: TestClient) -> None:
    created = client.post("/heroes/", json={"name": "Rusty-Man", "secret_name": "Tommy"})
    assert created.status_code == 200
    hero_id = created.json()["id"]
    assert client.get(f"/heroes/{hero_id}").json()["secret_name"] == "Tommy"
    updated = client.patch(f"/heroes/{hero_id}", json={"age": 48})
    assert updated.json()["age"] == 48
    assert client.delete(f"/heroes/{hero_id}").json() == {"ok": True}
    assert client.get(f"/heroes/{hero_id}").status_code == 404


def test_missing_hero_is_404(client: TestClient) -> None:
    assert client.get("/heroes/999999").status_code == 404
    assert client.patch("/heroes/999999", json={"age": 1}).status_code == 404


def test_many_concurrent_clients(client: TestClient) -> None:
    def create(n: int) -> int:
        body = {"name": f"Hero {n}", "secret_name": f"S{n}"}
        return client.post("/heroes/", json=body).status_code

    with ThreadPoolExecutor(max_workers=32) as pool:
        statuses = list(pool.map(create, range(64)))
    assert statuses == [200] * 64
    assert len(client.get("/heroes/", params={"limit": 1000}).json()) >= 65


def test_openapi_schema(client: TestClient) -> None:
    schema = client.get("/openapi.json")
    assert schema.status_code == 200
    assert schema.json()["paths"]["/heroes/"]["get"]["operationId"] == "heroes-read_heroes"
