-- The webhook dispatcher claims each registered unit's oldest due deliveries (a few per
-- unit): read through this index, a unit's backlog costs a few rows, not a sort of every
-- due row.
CREATE INDEX webhook_deliveries_due_by_unit ON webhook_deliveries (unit_code, next_attempt_at)
    WHERE status = 'pending';
