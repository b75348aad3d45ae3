-- A reporter's own words in an incident update's history step, kept apart from the
-- system's (`detail`): a page in Vietnamese translates the one and shows the other as
-- written, even when a note happens to read like a text of the catalogue. Steps written
-- before keep the note at the end of their detail.
ALTER TABLE alert_history ADD COLUMN note text;
