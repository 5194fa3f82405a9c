"""What PostgreSQL needs: connect options, statement timeouts (also behind PgBouncer), replicas."""
