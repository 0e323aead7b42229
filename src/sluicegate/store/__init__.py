"""Storage: the SQL database (SQLite or PostgreSQL) and Redis."""
