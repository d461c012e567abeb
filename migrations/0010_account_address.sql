-- The id under which a provider's pushes (webhooks) name an account, e.g. a Facebook
-- Page id: a webhook receiver finds the account by it.
ALTER TABLE threadsync.accounts ADD COLUMN address text COLLATE "C";
CREATE INDEX accounts_provider_address ON threadsync.accounts (provider, address) WHERE address IS NOT NULL;
