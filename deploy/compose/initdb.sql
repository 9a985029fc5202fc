-- One database per service (each service owns its schema and migrates it at start-up).
-- "authorization" is a reserved word in PostgreSQL, hence the quotes.
CREATE DATABASE request;
CREATE DATABASE "authorization";
CREATE DATABASE approval;
CREATE DATABASE ticketing;
