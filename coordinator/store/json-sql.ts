// Guarded reads of stored jsonb in SQL. Stored status reports were checked against the schema
// when posted, but a row of an older coordinator's report shape, a hand-edited row or a value
// over int range must not fail a query that reads many rows (a scrape, a cluster's applied
// generations). A field of the wrong JSON type or out of range reads as NULL. CASE, not AND,
// guards each cast: PostgreSQL evaluates a CASE's result only when its condition holds, and an
// AND's operands in any order.

/** `j` as an int when it is a JSON number 0..999,999,999; else NULL. */
export const jsonInt = (j: string): string => `CASE WHEN jsonb_typeof(${j}) = 'number' AND (${j} #>> '{}') ~ '^[0-9]{1,9}$' THEN (${j} #>> '{}')::int END`;
