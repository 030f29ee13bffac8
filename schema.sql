-- listmill data model (SPEC §2). Idempotent: `listmill migrate` applies it whenever its text
-- differs from the one it applied last (schema_applied).
-- Every tenant-owned row carries project_id and every query is scoped by it.

-- The digest of each schema.sql text applied (listmill.db.apply_schema): a migrate whose text
-- was the last applied does nothing, for some statements below lock their table even when
-- they change nothing, and a deploy's migrate should not stop the running jobs' writes.
CREATE TABLE IF NOT EXISTS schema_applied (
    digest      text PRIMARY KEY,             -- sha256 of the text
    applied_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS projects (
    id          bigserial PRIMARY KEY,
    name        text NOT NULL UNIQUE,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS api_keys (
    id            bigserial PRIMARY KEY,
    project_id    bigint NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    kind          text NOT NULL CHECK (kind IN ('secret', 'restricted')),
    prefix        text NOT NULL,                 -- visible part, e.g. sk_3f9a1c2b
    secret_hash   bytea NOT NULL UNIQUE,         -- sha256 of the whole key; the key is never stored
    scopes        text[] NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    last_used_at  timestamptz,
    revoked_at    timestamptz
);
CREATE INDEX IF NOT EXISTS api_keys_project ON api_keys (project_id);

-- contacts.project_id has no foreign key: its per-row check cost a third of every insert
-- (an import writes a million rows). A contact's project always comes from the key that
-- wrote it, and the trigger projects_delete_contacts below does what ON DELETE CASCADE did.
CREATE TABLE IF NOT EXISTS contacts (
    id                bigserial PRIMARY KEY,
    project_id        bigint NOT NULL,
    email             text NOT NULL,              -- as given (trimmed)
    email_normalized  text NOT NULL,              -- trimmed, lower-cased: the identity
    first_name        text,
    last_name         text,
    country           text,
    time_zone         text,
    data              jsonb NOT NULL DEFAULT '{}'::jsonb,
    status            text NOT NULL DEFAULT 'subscribed'
                      CHECK (status IN ('subscribed', 'unsubscribed', 'bounced', 'complained')),
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT contacts_project_email_key UNIQUE (project_id, email_normalized)
) WITH (fillfactor = 95);
CREATE INDEX IF NOT EXISTS contacts_project_id ON contacts (project_id, id);
-- 5 % of each page left free, so that more of a contact's next versions (a status change, an
-- edit) fit on its page: an update that touches no index (HOT), and whose page's dead versions
-- are pruned as it goes. With full pages, each bulk (un)subscribe of the same contacts added an
-- entry per contact to all three indexes, and the unique index's check visited every version:
-- beside an import, a 1,000-contact bulk job ran for 110-130 ms, and now for 55-80
-- (bench/import_throughput.py); the import itself is no slower. Set on a table made before it,
-- for the pages to come.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_class WHERE oid = 'contacts'::regclass
                   AND 'fillfactor=95' = ANY (reloptions)) THEN
        ALTER TABLE contacts SET (fillfactor = 95);
    END IF;
END
$$;
ALTER TABLE contacts DROP CONSTRAINT IF EXISTS contacts_project_id_fkey;
-- The hash of a contact's line (listmill.keyhash.text_hashes of csvcolumns.Contacts.lines: its
-- LINE_COLUMNS in COPY's text format), kept by the import that made it: a re-import
-- reads these 8 bytes instead of the line, whose jsonb Postgres would turn into text (half of
-- the read's cost: knowncontacts). NULL where not known; the merges set it NULL where they
-- change a contact (queries.contacts), and the trigger below does for any other UPDATE of
-- these columns (a PATCH of one; not of the status or the email's case, which keep it). A
-- release that changes the line or the hash must clear it first (UPDATE ... SET line_hash =
-- NULL): a stale hash that matched a row would have it counted unchanged and not written.
ALTER TABLE contacts ADD COLUMN IF NOT EXISTS line_hash bigint;
CREATE OR REPLACE FUNCTION contacts_forget_line_hash() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.line_hash := NULL;
    RETURN NEW;
END
$$;
CREATE OR REPLACE TRIGGER contacts_forget_line_hash BEFORE UPDATE ON contacts FOR EACH ROW
    WHEN (OLD.line_hash IS NOT NULL AND NEW.line_hash IS NOT DISTINCT FROM OLD.line_hash
          AND (NEW.email_normalized, NEW.first_name, NEW.last_name, NEW.country, NEW.time_zone,
               NEW.data)
              IS DISTINCT FROM (OLD.email_normalized, OLD.first_name, OLD.last_name,
                                OLD.country, OLD.time_zone, OLD.data))
    EXECUTE FUNCTION contacts_forget_line_hash();

-- Rows of a table with no foreign key to their parent go with it (the parent's triggers): those
-- of TG_ARGV[0] whose TG_ARGV[1] is a deleted row's id, once per statement; all on TRUNCATE
-- (unless that TRUNCATE emptied them already: it may name both, and the table is in use then).
CREATE OR REPLACE FUNCTION delete_children() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE format('DELETE FROM %I c USING deleted d WHERE c.%I = d.id', TG_ARGV[0], TG_ARGV[1]);
    RETURN NULL;
END
$$;
CREATE OR REPLACE FUNCTION truncate_children() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    filled boolean;
BEGIN
    EXECUTE format('SELECT EXISTS (SELECT FROM %I)', TG_ARGV[0]) INTO filled;
    IF filled THEN
        EXECUTE format('TRUNCATE %I CASCADE', TG_ARGV[0]);
    END IF;
    RETURN NULL;
END
$$;
CREATE OR REPLACE TRIGGER projects_delete_contacts AFTER DELETE ON projects
    REFERENCING OLD TABLE AS deleted
    FOR EACH STATEMENT EXECUTE FUNCTION delete_children('contacts', 'project_id');
CREATE OR REPLACE TRIGGER projects_truncate_contacts AFTER TRUNCATE ON projects
    FOR EACH STATEMENT EXECUTE FUNCTION truncate_children('contacts');
-- what these two triggers ran before delete_children and truncate_children
DROP FUNCTION IF EXISTS projects_delete_contacts();
DROP FUNCTION IF EXISTS projects_truncate_contacts();

CREATE TABLE IF NOT EXISTS lists (
    id              bigserial PRIMARY KEY,
    project_id      bigint NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    name            text NOT NULL,
    description     text,
    opt_in_process  text NOT NULL DEFAULT 'single' CHECK (opt_in_process IN ('single', 'double')),
    status          text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'archived')),
    member_count    integer NOT NULL DEFAULT 0,   -- with list_member_count_changes: see there
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT lists_project_name_key UNIQUE (project_id, name)
);
CREATE INDEX IF NOT EXISTS lists_project_id ON lists (project_id, id);

-- list_memberships.project_id and sequence_enrollments.project_id have no foreign key: a
-- membership or an enrollment goes with its list or sequence (and contact), each of which
-- goes with its project, and the per-row check made an import into a list slower
-- (bench/import_throughput.py --list --rows 200000: first import 8.0-8.1 s, without it
-- 6.7-7.4 s; half-new 5.5-5.7 s, without it 4.8-5.0 s).
-- Nor have list_memberships.list_id, sequence_enrollments.sequence_id and .job_id: a check
-- per row of the one row they all name (20,000 a batch), and the triggers after
-- sequence_enrollments do what their ON DELETE did. Their writers lock that row once per
-- statement instead, as the check did per row (memberships.share_list, take_list,
-- enroll_in_list_sequences), and find it gone if it was deleted (--list --rows 200000: first
-- import 7.9 / 7.6 s, without them 5.5 / 5.6; half-new 5.6 / 5.5 s, without them 4.7 / 4.5).
CREATE TABLE IF NOT EXISTS list_memberships (
    list_id               bigint NOT NULL,
    contact_id            bigint NOT NULL REFERENCES contacts (id) ON DELETE CASCADE,
    project_id            bigint NOT NULL,
    status                text NOT NULL CHECK (status IN ('pending', 'subscribed', 'confirmed',
                              'unsubscribed', 'bounced', 'complained', 'cleaned')),
    source                text NOT NULL DEFAULT 'api'
                          CHECK (source IN ('manual', 'import', 'api', 'form', 'migration')),
    subscribed_at         timestamptz,
    confirmed_at          timestamptz,
    unsubscribed_at       timestamptz,
    consent_source        text,
    consent_text_version  text,
    consent_ip            inet,                   -- anonymised: IPv4 /24, IPv6 /48
    created_at            timestamptz NOT NULL DEFAULT now(),
    updated_at            timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (list_id, contact_id)
);
CREATE INDEX IF NOT EXISTS list_memberships_contact ON list_memberships (contact_id);
CREATE INDEX IF NOT EXISTS list_memberships_list_status ON list_memberships (list_id, status, contact_id);

CREATE TABLE IF NOT EXISTS sequences (
    id              bigserial PRIMARY KEY,
    project_id      bigint NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    name            text NOT NULL,
    status          text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'paused')),
    trigger_config  jsonb NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS sequences_project_id ON sequences (project_id, id);
CREATE INDEX IF NOT EXISTS sequences_trigger_list
    ON sequences (project_id, ((trigger_config ->> 'list_id')))
    WHERE status = 'active' AND trigger_config ->> 'type' = 'list_added';

CREATE TABLE IF NOT EXISTS jobs (
    id                   uuid PRIMARY KEY,
    project_id           bigint NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    kind                 text NOT NULL CHECK (kind IN ('import', 'bulk_upsert', 'bulk_subscribe',
                             'bulk_unsubscribe', 'bulk_delete', 'add_members', 'remove_members')),
    lane                 text NOT NULL CHECK (lane IN ('small', 'large')),
    status               text NOT NULL DEFAULT 'queued'
                         CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
    params               jsonb NOT NULL,          -- the request, as validated
    payload              jsonb,                   -- the rows to apply (ids, emails, contacts)
    total                integer,
    processed            integer NOT NULL DEFAULT 0,
    counts               jsonb NOT NULL DEFAULT '{}'::jsonb,
    checkpoint           integer NOT NULL DEFAULT 0,   -- items committed so far
    attempts             integer NOT NULL DEFAULT 0,
    max_attempts         integer NOT NULL,
    cancel_requested     boolean NOT NULL DEFAULT false,
    lease_token          uuid,                    -- the claim of the worker running it
    lease_expires_at     timestamptz,
    heartbeat_at         timestamptz,
    worker_id            text,
    run_after            timestamptz,             -- backoff: not to be started before this
    errors_count         integer NOT NULL DEFAULT 0,
    errors_truncated     boolean NOT NULL DEFAULT false,
    error                text,
    rows_per_second      double precision,
    created_at           timestamptz NOT NULL DEFAULT now(),
    enqueued_at          timestamptz,
    started_at           timestamptz,
    updated_at           timestamptz NOT NULL DEFAULT now(),
    finished_at          timestamptz
);
CREATE INDEX IF NOT EXISTS jobs_project_created ON jobs (project_id, created_at DESC, id DESC);
CREATE INDEX IF NOT EXISTS jobs_unfinished ON jobs (status, lane, created_at)
    WHERE status IN ('queued', 'running');
CREATE INDEX IF NOT EXISTS jobs_finished_at ON jobs (finished_at) WHERE finished_at IS NOT NULL;

CREATE TABLE IF NOT EXISTS idempotency_keys (
    project_id    bigint NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    key           text NOT NULL,
    fingerprint   text NOT NULL,                  -- sha256 of method, path and body
    job_id        uuid NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (project_id, key)
);
CREATE INDEX IF NOT EXISTS idempotency_keys_created ON idempotency_keys (created_at);

CREATE TABLE IF NOT EXISTS job_errors (
    job_id      uuid NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    seq         integer NOT NULL,                 -- order of the report
    row_number  integer,                          -- 1-based item or CSV row number
    email       text,
    code        text NOT NULL,
    message     text NOT NULL,
    PRIMARY KEY (job_id, seq)
);

-- An upload is streamed in before its job row is written (same transaction): hence deferred.
CREATE TABLE IF NOT EXISTS job_file_chunks (
    job_id  uuid NOT NULL REFERENCES jobs (id) ON DELETE CASCADE DEFERRABLE INITIALLY DEFERRED,
    seq     integer NOT NULL,
    data    bytea NOT NULL,
    PRIMARY KEY (job_id, seq)
);
-- lz4 compresses an upload's chunks four times faster than the default pglz (0.2 s instead of
-- 0.8 for a 75 MB file; 23 MB stored instead of 18). Setting it locks the table, so it is set
-- once; a server built without lz4 refuses the setting below (without a lock) and keeps pglz.
DO $$
DECLARE
    toast_default text := current_setting('default_toast_compression');
BEGIN
    PERFORM set_config('default_toast_compression', 'lz4', true);
    PERFORM set_config('default_toast_compression', toast_default, true);
    IF (SELECT attcompression FROM pg_attribute
        WHERE attrelid = 'job_file_chunks'::regclass AND attname = 'data') <> 'l' THEN
        ALTER TABLE job_file_chunks ALTER COLUMN data SET COMPRESSION lz4;
    END IF;
EXCEPTION WHEN invalid_parameter_value OR feature_not_supported THEN
    NULL;
END
$$;

CREATE TABLE IF NOT EXISTS sequence_enrollments (
    sequence_id  bigint NOT NULL,  -- no foreign key: see list_memberships
    contact_id   bigint NOT NULL REFERENCES contacts (id) ON DELETE CASCADE,
    project_id   bigint NOT NULL,  -- no foreign key: see list_memberships
    status       text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'completed', 'exited')),
    enrolled_at  timestamptz NOT NULL DEFAULT now(),
    job_id       uuid,  -- the job that enrolled it, if any; no foreign key: see list_memberships
    PRIMARY KEY (sequence_id, contact_id)
);
CREATE INDEX IF NOT EXISTS sequence_enrollments_contact ON sequence_enrollments (contact_id);
ALTER TABLE list_memberships DROP CONSTRAINT IF EXISTS list_memberships_project_id_fkey;
ALTER TABLE sequence_enrollments DROP CONSTRAINT IF EXISTS sequence_enrollments_project_id_fkey;
ALTER TABLE list_memberships DROP CONSTRAINT IF EXISTS list_memberships_list_id_fkey;
ALTER TABLE sequence_enrollments DROP CONSTRAINT IF EXISTS sequence_enrollments_sequence_id_fkey;
ALTER TABLE sequence_enrollments DROP CONSTRAINT IF EXISTS sequence_enrollments_job_id_fkey;

-- What those foreign keys' ON DELETE did (delete_children, above): a list's memberships and a
-- sequence's enrollments go with it, and a deleted job's enrollments keep no job.
CREATE OR REPLACE TRIGGER lists_delete_memberships AFTER DELETE ON lists
    REFERENCING OLD TABLE AS deleted
    FOR EACH STATEMENT EXECUTE FUNCTION delete_children('list_memberships', 'list_id');
CREATE OR REPLACE TRIGGER lists_truncate_memberships AFTER TRUNCATE ON lists
    FOR EACH STATEMENT EXECUTE FUNCTION truncate_children('list_memberships');
CREATE OR REPLACE TRIGGER sequences_delete_enrollments AFTER DELETE ON sequences
    REFERENCING OLD TABLE AS deleted
    FOR EACH STATEMENT EXECUTE FUNCTION delete_children('sequence_enrollments', 'sequence_id');
CREATE OR REPLACE TRIGGER sequences_truncate_enrollments AFTER TRUNCATE ON sequences
    FOR EACH STATEMENT EXECUTE FUNCTION truncate_children('sequence_enrollments');
-- (one pass over the enrollments per statement that deleted jobs: the foreign key, with no
-- index on job_id, made one per deleted job)
CREATE OR REPLACE FUNCTION jobs_delete_enrollments() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT FROM old_jobs) THEN  -- the retention's hourly DELETE most often has none
        UPDATE sequence_enrollments e SET job_id = NULL FROM old_jobs j WHERE e.job_id = j.id;
    END IF;
    RETURN NULL;
END
$$;
CREATE OR REPLACE TRIGGER jobs_delete_enrollments AFTER DELETE ON jobs
    REFERENCING OLD TABLE AS old_jobs
    FOR EACH STATEMENT EXECUTE FUNCTION jobs_delete_enrollments();
CREATE OR REPLACE FUNCTION jobs_truncate_enrollments() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE sequence_enrollments SET job_id = NULL WHERE job_id IS NOT NULL;
    RETURN NULL;
END
$$;
CREATE OR REPLACE TRIGGER jobs_truncate_enrollments AFTER TRUNCATE ON jobs
    FOR EACH STATEMENT EXECUTE FUNCTION jobs_truncate_enrollments();

-- A list's member count (subscribed or confirmed) is lists.member_count plus the sum of its rows
-- here, exact through every statement that changes memberships, cascades included: a
-- statement-level trigger adds one row per list and statement, in the statement's transaction.
-- It never writes the list's row: a job that wrote memberships and then waited for the list's
-- row lock, held by another that waited for one of its memberships, was a deadlock (a mirror
-- import's unsubscribe beside bulk subscribes of the same list), and every writer of a list's
-- memberships waited for the one before to commit. The rows are folded into lists.member_count
-- by the reconciliation cron (queries.memberships.fold_member_counts). No foreign key: the
-- rows of a deleted list are dropped by the next fold.
CREATE TABLE IF NOT EXISTS list_member_count_changes (
    list_id  bigint NOT NULL,
    delta    integer NOT NULL
);
CREATE INDEX IF NOT EXISTS list_member_count_changes_list ON list_member_count_changes (list_id);

CREATE OR REPLACE FUNCTION list_member_count_sync() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO list_member_count_changes (list_id, delta)
        SELECT list_id, count(*) FROM new_rows
        WHERE status IN ('subscribed', 'confirmed') GROUP BY list_id;
    ELSIF TG_OP = 'DELETE' THEN
        INSERT INTO list_member_count_changes (list_id, delta)
        SELECT list_id, -count(*) FROM old_rows
        WHERE status IN ('subscribed', 'confirmed') GROUP BY list_id;
    ELSE
        INSERT INTO list_member_count_changes (list_id, delta)
        SELECT list_id, sum(delta) FROM (
            SELECT list_id, 1 AS delta FROM new_rows WHERE status IN ('subscribed', 'confirmed')
            UNION ALL
            SELECT list_id, -1 FROM old_rows WHERE status IN ('subscribed', 'confirmed')
        ) changes GROUP BY list_id HAVING sum(delta) <> 0;
    END IF;
    RETURN NULL;
END
$$;

CREATE OR REPLACE TRIGGER list_memberships_count_insert AFTER INSERT ON list_memberships
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION list_member_count_sync();
CREATE OR REPLACE TRIGGER list_memberships_count_update AFTER UPDATE ON list_memberships
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION list_member_count_sync();
CREATE OR REPLACE TRIGGER list_memberships_count_delete AFTER DELETE ON list_memberships
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION list_member_count_sync();

-- An import's rows, parsed and validated, staged by COPY; merged batch by batch, then deleted.
CREATE TABLE IF NOT EXISTS import_rows (
    job_id            uuid NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    position          integer NOT NULL,           -- 1-based among the file's data rows
    row_number        integer NOT NULL,           -- as a spreadsheet shows it (header = 1)
    email             text NOT NULL,
    email_normalized  text NOT NULL,
    first_name        text,
    last_name         text,
    country           text,
    time_zone         text,
    data              jsonb NOT NULL,
    duplicate         boolean NOT NULL DEFAULT false,  -- a later row of the file has this email
    key_hash          bigint,  -- held (its email's key is another row's too): the key's hash
    PRIMARY KEY (job_id, position)
);
ALTER TABLE import_rows ADD COLUMN IF NOT EXISTS key_hash bigint;
-- the held rows of a group, looked up by its hash (a mirror import stages every row)
CREATE INDEX IF NOT EXISTS import_rows_held ON import_rows (job_id, key_hash)
    WHERE key_hash IS NOT NULL;
