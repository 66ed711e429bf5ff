-- Managed by psa-infra (templates/postgresql/bootstrap.sql.j2) for psa-db-master.
-- Holds the app role's password: installed 0600, owner postgres. Run with
--   runuser -u postgres -- psql -X -v ON_ERROR_STOP=1 -d postgres -f <this file>
-- Every statement is safe to repeat. Names are quoted identifiers; the
-- inventory allows only lowercase letters, digits and _ in them.

-- Keep this session's statements, the password above all, out of the log.
SET log_statement = 'none';
SET log_min_duration_statement = -1;
SET log_min_error_statement = 'panic';

SELECT format('CREATE ROLE %I LOGIN', 'psa_app')
WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'psa_app')
\gexec

ALTER ROLE "psa_app" WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE
  PASSWORD 'pg p''w"d\/@x$1';

SELECT format('CREATE DATABASE %I OWNER %I ENCODING %L TEMPLATE template0',
              'psa_platform', 'psa_app', 'UTF8')
WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'psa_platform')
\gexec

ALTER DATABASE "psa_platform" OWNER TO "psa_app";
-- Only the app role connects to its database; PUBLIC gets CONNECT by default.
REVOKE CONNECT, TEMPORARY ON DATABASE "psa_platform" FROM PUBLIC;
GRANT CONNECT, TEMPORARY ON DATABASE "psa_platform" TO "psa_app";
