"""What SQLite needs: WAL and pragmas, one writer at a time, statement deadlines."""
