-- A unit may list only a few entries that look alike (the same name and birth year, or
-- the same national id): a flood of copies of another unit's wanted person must not
-- crowd the real one out (README, "Nothing lost silently"). Keys are written by
-- services/ingest/store.py (the same folding: no marks, lower case, single spaces).
ALTER TABLE watchlist_entries ADD COLUMN name_key text, ADD COLUMN id_key text;
UPDATE watchlist_entries SET
    name_key = CASE WHEN entry ->> 'full_name' IS NULL THEN NULL ELSE
        trim(regexp_replace(lower(translate(entry ->> 'full_name',
            'àáạảãâầấậẩẫăằắặẳẵèéẹẻẽêềếệểễìíịỉĩòóọỏõôồốộổỗơờớợởỡùúụủũưừứựửữỳýỵỷỹđÀÁẠẢÃÂẦẤẬẨẪĂẰẮẶẲẴÈÉẸẺẼÊỀẾỆỂỄÌÍỊỈĨÒÓỌỎÕÔỒỐỘỔỖƠỜỚỢỞỠÙÚỤỦŨƯỪỨỰỬỮỲÝỴỶỸĐ',
            'aaaaaaaaaaaaaaaaaeeeeeeeeeeeiiiiiooooooooooooooooouuuuuuuuuuuyyyyydaaaaaaaaaaaaaaaaaeeeeeeeeeeeiiiiiooooooooooooooooouuuuuuuuuuuyyyyyd')), '\s+', ' ', 'g'))
        || '|' || coalesce(entry ->> 'birth_year', left(entry ->> 'birth_date', 4), '') END,
    id_key = nullif(regexp_replace(coalesce(entry ->> 'national_id', ''), '[^0-9]', '', 'g'), '');
CREATE INDEX watchlist_lookalike_name ON watchlist_entries (owner_unit, name_key)
    WHERE cancelled_at IS NULL AND name_key IS NOT NULL;
CREATE INDEX watchlist_lookalike_id ON watchlist_entries (owner_unit, id_key)
    WHERE cancelled_at IS NULL AND id_key IS NOT NULL;
