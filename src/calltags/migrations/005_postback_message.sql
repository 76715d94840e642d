-- The message a refused postback was answered with, beside its error code, so that the
-- log says why (the console shows both). NULL for accepted postbacks and for entries
-- written before this column.
ALTER TABLE postbacks ADD COLUMN message text;
