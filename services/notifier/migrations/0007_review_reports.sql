-- Review reports ("sơ kết"): what each unit decided is kept on the alert itself (it was
-- only in the history, and closing an alert overwrites its status), and alerts are found
-- by when they were raised.
ALTER TABLE alerts ADD COLUMN decision text CHECK (decision IN ('confirmed', 'rejected'));
UPDATE alerts a SET decision = h.action
  FROM (SELECT DISTINCT ON (alert_id) alert_id, action FROM alert_history
         WHERE action IN ('confirmed', 'rejected') ORDER BY alert_id, id DESC) h
 WHERE h.alert_id = a.alert_id;
CREATE INDEX alerts_by_raised ON alerts (raised_at);
