-- Every report records the person whose key sent it (shared 0004: people).
ALTER TABLE events ADD COLUMN person_id bigint REFERENCES people (id);
