-- The raw SQL of a ledger credit: lock the balance row, append the entry, update the balance.
\set acct random(1, :accounts)
BEGIN;
SELECT balance AS bal FROM stripe_idempotency_ledgerbalance
    WHERE account = 'acct_' || :acct AND currency = 'usd' FOR UPDATE \gset
INSERT INTO stripe_idempotency_ledgerentry (account, currency, amount, balance_after, entry_type, reference, created_at, metadata)
    VALUES ('acct_' || :acct, 'usd', 100, :bal + 100, 'pgbench', NULL, now(), '{}');
UPDATE stripe_idempotency_ledgerbalance SET balance = :bal + 100, updated_at = now()
    WHERE account = 'acct_' || :acct AND currency = 'usd';
COMMIT;
