-- refresh_thread checks its arguments, so a web app's bad call fails in the app's own
-- transaction with a clear one-line message (SQLSTATE 22023) instead of queueing a job
-- that can only fail. A thread id is opaque, but it is never empty, never padded with
-- whitespace, never holds control characters and never runs past 256 characters.
CREATE OR REPLACE FUNCTION threadsync.refresh_thread(account text, thread_id text)
RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    in_flight integer;
    provider  text;
BEGIN
    SELECT a.max_in_flight, a.provider INTO in_flight, provider
      FROM threadsync.accounts a WHERE a.id = account;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'threadsync: no account %; workers register the accounts of their jobs.toml when they start',
            coalesce(quote_literal(regexp_replace(account, '[[:cntrl:]]', '?', 'g')), 'NULL')
            USING ERRCODE = '22023';
    ELSIF provider <> 'ebay' THEN
        RAISE EXCEPTION 'threadsync: account % is a % account; threads are refreshed on eBay accounts only',
            quote_literal(account), provider
            USING ERRCODE = '22023';
    END IF;
    IF thread_id IS NULL OR thread_id = '' OR thread_id <> btrim(thread_id)
       OR thread_id ~ '[[:cntrl:]]' OR length(thread_id) > 256 THEN
        RAISE EXCEPTION 'threadsync: bad thread id %: it must be 1 to 256 characters, without surrounding whitespace or control characters',
            coalesce(quote_literal(left(regexp_replace(thread_id, '[[:cntrl:]]', '?', 'g'), 40))
                     || CASE WHEN length(thread_id) > 40 THEN '...' ELSE '' END, 'NULL')
            USING ERRCODE = '22023';
    END IF;
    RETURN threadsync.enqueue(
        kind              => 'ebay.conversation',
        payload           => jsonb_build_object('account', account, 'thread_id', thread_id),
        priority          => 100,
        dedupe_key        => 'ebay:conversation:' || account || ':' || thread_id,
        concurrency_key   => 'ebay:' || account,
        concurrency_limit => in_flight);
END
$$;
