-- Every step a person takes on an alert records who (shared 0004: people); the name is
-- kept as it was, like the unit names of deliveries.
ALTER TABLE alert_history ADD COLUMN person_id bigint REFERENCES people (id);
ALTER TABLE alert_history ADD COLUMN person_name text;
