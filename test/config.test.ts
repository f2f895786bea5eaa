import { mkdir, mkdtemp, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { expect } from 'chai';
import { describeMeta } from '../lib/cli/context.js';
import {
  type BackendConfig,
  describeBackend,
  didYouMean,
  jsonErrorOffset,
  loadConfig,
  parseConfig,
  sameLocation,
} from '../lib/config/index.js';
import { ConfigError } from '../lib/contract/errors.js';
import { redact, redactString } from '../lib/contract/redact.js';
import { createKnex, parseMysqlUrl } from '../lib/meta/index.js';
import { announce, MYSQL_URL, PG_URL, uniqueName } from './support/env.js';

const SECRET = 'wJalrXUtnFEMI-literal-secret-K7MDENG';
const ENV_SECRET = 'env-secret-9f8e7d6c5b4a';
const ENV_TOKEN = 'env-session-token-1234567890';
const DB_PASSWORD = 'db-pass-5up3r/s3cr3t';
const URL_PASSWORD = 'url-pa$$word-h!dden';

const ENV: Record<string, string> = {
  BS_TEST_KEY_ID: 'AKIAEXAMPLE',
  BS_TEST_SECRET: ENV_SECRET,
  BS_TEST_TOKEN: ENV_TOKEN,
  BS_TEST_SOCKETS: '32',
  BS_TEST_PATH_STYLE: 'true',
  BS_TEST_DB_PASSWORD: 'p@ss/w:rd%$x',
  BS_TEST_DB_HOST: 'db.internal',
};

function base(): Record<string, unknown> {
  return {
    meta: { client: 'better-sqlite3', connection: { filename: './blobs.sqlite' }, table: 'blob_meta' },
    old: { type: 'fs', root: './blobs', fileMode: '0644' },
    new: {
      type: 's3',
      bucket: 'blobs',
      prefix: '',
      endpoint: 'http://127.0.0.1:9000',
      region: 'us-east-1',
      forcePathStyle: true,
      credentials: { accessKeyId: '$BS_TEST_KEY_ID', secretAccessKey: '$BS_TEST_SECRET' },
      requestChecksumCalculation: 'WHEN_REQUIRED',
      responseChecksumValidation: 'WHEN_REQUIRED',
      maxSockets: 64,
      connectionTimeoutMs: 5000,
      requestTimeoutMs: 120000,
    },
  };
}

/** A deep copy of `obj` with `value` set (or deleted, for `undefined`) at the dotted `path`. */
function withValue(obj: Record<string, unknown>, path: string, value: unknown): Record<string, unknown> {
  const copy = structuredClone(obj);
  const parts = path.split('.');
  let cur = copy as Record<string, unknown>;
  for (const p of parts.slice(0, -1)) {
    if (typeof cur[p] !== 'object' || cur[p] === null) cur[p] = {};
    cur = cur[p] as Record<string, unknown>;
  }
  const last = parts[parts.length - 1] as string;
  if (value === undefined) delete cur[last];
  else cur[last] = value;
  return copy;
}

function configError(fn: () => unknown): ConfigError {
  try {
    fn();
  } catch (err) {
    expect(err).to.be.instanceOf(ConfigError);
    return err as ConfigError;
  }
  expect.fail('expected a ConfigError');
}

/**
 * For errors that may come from a lazily imported module: under the test
 * loader such a module can get its own copy of the error classes, so match
 * the stable code and name rather than the class identity.
 */
async function configErrorAsync(p: Promise<unknown>): Promise<ConfigError> {
  const err = await p.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).to.have.property('code', 'E_CONFIG');
  expect(err).to.have.property('name', 'ConfigError');
  return err as ConfigError;
}

function expectNoSecrets(text: string): void {
  for (const s of [
    SECRET,
    ENV_SECRET,
    ENV_TOKEN,
    DB_PASSWORD,
    URL_PASSWORD,
    encodeURIComponent(URL_PASSWORD),
  ]) {
    expect(text).to.not.include(s);
  }
}

describe('config', () => {
  let dir: string;
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'blobshift-config-'));
    Object.assign(process.env, ENV);
  });
  after(async () => {
    for (const k of Object.keys(ENV)) delete process.env[k];
    await rm(dir, { recursive: true, force: true });
  });

  describe('a valid config', () => {
    it('loads the DESIGN example: env values, defaults, octal modes, paths resolved against the file', async () => {
      const sub = join(dir, 'etc');
      await mkdir(sub, { recursive: true });
      const file = join(sub, 'blobshift.config.json');
      await writeFile(file, JSON.stringify(base(), null, 2));
      const loaded = await loadConfig(file);
      expect(loaded.file).to.equal(file);
      expect(loaded.baseDir).to.equal(sub);
      const { config } = loaded;
      expect(config.meta).to.deep.equal({
        client: 'better-sqlite3',
        connection: { filename: join(sub, 'blobs.sqlite') },
        table: 'blob_meta',
      });
      expect(config.old).to.deep.equal({ type: 'fs', root: join(sub, 'blobs'), fileMode: 0o644 });
      expect(config.new).to.include({ type: 's3', bucket: 'blobs', maxSockets: 64, forcePathStyle: true });
      expect(config.new?.type === 's3' && config.new.credentials).to.deep.equal({
        accessKeyId: 'AKIAEXAMPLE',
        secretAccessKey: ENV_SECRET,
      });
    });

    it('keeps absolute paths, maps sqlite3 to better-sqlite3 and mysql to mysql2, defaults the table', () => {
      const a = parseConfig(
        {
          meta: { client: 'sqlite3', connection: { filename: '/var/lib/app/blobs.sqlite' } },
          new: { type: 'fs', root: '/srv/blobs', dirMode: '0750', fileMode: 0o600 },
        },
        dir,
      );
      expect(a.config.meta).to.deep.equal({
        client: 'better-sqlite3',
        connection: { filename: '/var/lib/app/blobs.sqlite' },
        table: 'blob_meta',
      });
      expect(a.config.new).to.deep.equal({ type: 'fs', root: '/srv/blobs', dirMode: 0o750, fileMode: 0o600 });
      const b = parseConfig(
        {
          meta: {
            client: 'mysql',
            connection: 'mysql://app@db:3306/app',
            table: 'files',
            columns: { id: 'file_id', key: 'path', size: 'bytes', type: 'kind' },
            runsTable: 'files_blobshift_runs',
            pool: { min: 0, max: 4 },
          },
          new: { type: 'memory' },
        },
        dir,
      );
      expect(b.config.meta).to.deep.equal({
        client: 'mysql2',
        connection: 'mysql://app@db:3306/app',
        table: 'files',
        columns: { id: 'file_id', key: 'path', size: 'bytes', type: 'kind' },
        runsTable: 'files_blobshift_runs',
        pool: { min: 0, max: 4 },
      });
    });

    it('takes numbers and booleans from the environment, the braced form too, and $$ as a literal $', () => {
      const cfg = withValue(
        withValue(
          withValue(base(), 'new.maxSockets', '$BS_TEST_SOCKETS'),
          'new.forcePathStyle',
          // biome-ignore lint/suspicious/noTemplateCurlyInString: the config's braced variable syntax
          '${BS_TEST_PATH_STYLE}',
        ),
        'new.prefix',
        '$$dollar/',
      );
      // biome-ignore lint/suspicious/noTemplateCurlyInString: the config's braced variable syntax
      const braced = '${BS_TEST_TOKEN}';
      const { config } = parseConfig(withValue(cfg, 'new.credentials.sessionToken', braced), dir);
      expect(config.new).to.include({ maxSockets: 32, forcePathStyle: true, prefix: '$dollar/' });
      expect(config.new?.type === 's3' && config.new.credentials?.sessionToken).to.equal(ENV_TOKEN);
    });

    it('interpolates variables inside strings, percent-encoded inside URLs', () => {
      const { config } = parseConfig(
        withValue(
          withValue(base(), 'meta', {
            client: 'mysql2',
            // biome-ignore lint/suspicious/noTemplateCurlyInString: the config's braced variable syntax
            connection: 'mysql://app:$BS_TEST_DB_PASSWORD@${BS_TEST_DB_HOST}:3306/app',
          }),
          'old.root',
          './data-$BS_TEST_DB_HOST/$$raw/cost$',
        ),
        dir,
      );
      expect(config.meta.connection).to.equal(
        `mysql://app:${encodeURIComponent('p@ss/w:rd%$x')}@db.internal:3306/app`,
      );
      expect(parseMysqlUrl(config.meta.connection as string)).to.include({
        user: 'app',
        password: 'p@ss/w:rd%$x',
        host: 'db.internal',
        database: 'app',
      });
      expect(config.old).to.include({ root: join(dir, 'data-db.internal/$raw/cost$') });
      expectNoSecrets(JSON.stringify(redact(config)));
      expectNoSecrets(redactString('connecting with p@ss/w:rd%$x'));
      const err = configError(() =>
        parseConfig(
          withValue(base(), 'meta', { client: 'mysql2', connection: 'mysql://app:$BS_TEST_NOPE@db/app' }),
          dir,
        ),
      );
      expect(err.path).to.equal('meta.connection');
      expect(err.message).to.include('BS_TEST_NOPE is not set');
    });
  });

  describe('S3 ACL options', () => {
    it('takes acl and readAcl for an S3 backend and hands them to S3BlobDB; refuses an unknown ACL', async () => {
      const cfg = withValue(withValue(base(), 'new.acl', 'public-read'), 'new.readAcl', 'true');
      const loaded = parseConfig(cfg, dir);
      expect(loaded.config.new).to.include({ acl: 'public-read', readAcl: true });
      let err: unknown;
      try {
        parseConfig(withValue(base(), 'new.acl', 'public'), dir);
      } catch (e) {
        err = e;
      }
      expect(err).to.be.instanceOf(ConfigError);
      expect((err as ConfigError).path).to.equal('new.acl');
      expect((err as Error).message).to.match(/public-read/);
    });
  });

  describe('a bad config gives a ConfigError naming the field', () => {
    const cases: [string, string, unknown, string, RegExp][] = [
      ['meta missing', 'meta', undefined, 'meta', /required/],
      ['meta not an object', 'meta', 'sqlite', 'meta', /must be an object/],
      ['client missing', 'meta.client', undefined, 'meta.client', /required.*better-sqlite3/],
      ['unknown client', 'meta.client', 'mssql', 'meta.client', /unknown database client "mssql"/],
      ['client typo', 'meta.client', 'mysq2', 'meta.client', /did you mean "mysql2"/],
      ['connection missing', 'meta.connection', undefined, 'meta.connection', /required/],
      [
        'sqlite connection as a number',
        'meta.connection',
        5,
        'meta.connection',
        /must be an object, got a number/,
      ],
      ['filename missing', 'meta.connection.filename', undefined, 'meta.connection.filename', /required/],
      ['filename empty', 'meta.connection.filename', '', 'meta.connection.filename', /must not be empty/],
      [
        'filename typo',
        'meta.connection.filenme',
        'x.sqlite',
        'meta.connection.filenme',
        /did you mean "filename"/,
      ],
      ['table typo', 'meta.tabel', 'x', 'meta.tabel', /unknown key "tabel"; did you mean "table"\?/],
      ['table not an identifier', 'meta.table', 'blob-meta', 'meta.table', /plain SQL name/],
      ['table too long', 'meta.table', 'a'.repeat(48), 'meta.table', /at most 47/],
      ['table a number', 'meta.table', 7, 'meta.table', /must be a string, got a number/],
      ['columns without size', 'meta.columns', { id: 'id', key: 'k' }, 'meta.columns.size', /required/],
      [
        'column typo',
        'meta.columns',
        { id: 'id', key: 'k', size: 's', contntType: 'c' },
        'meta.columns.contntType',
        /did you mean "contentType"/,
      ],
      [
        'column not an identifier',
        'meta.columns',
        { id: 'id', key: 'k; drop', size: 's' },
        'meta.columns.key',
        /SQL name/,
      ],
      ['runsTable without columns', 'meta.runsTable', 'runs', 'meta.runsTable', /only with meta.columns/],
      ['pool max 0', 'meta.pool', { max: 0 }, 'meta.pool.max', /at least 1/],
      ['pool typo', 'meta.pool', { maxx: 3 }, 'meta.pool.maxx', /did you mean "max"/],
      ['unknown top-level key', 'nwe', {}, 'nwe', /did you mean "new"/],
      ['old not an object', 'old', 'fs:/x', 'old', /object/],
      ['backend type missing', 'old.type', undefined, 'old.type', /required.*fs, s3, memory/],
      ['unknown backend type', 'old.type', 'gcs', 'old.type', /unknown backend type "gcs"/],
      ['backend type typo', 'old.type', 'S3', 'old.type', /did you mean "s3"/],
      ['fs root missing', 'old.root', undefined, 'old.root', /required/],
      ['fs root a number', 'old.root', 5, 'old.root', /must be a string, got a number/],
      ['fs root typo', 'old.rootDir', '/x', 'old.rootDir', /unknown key "rootDir"/],
      ['fileMode as a decimal 644', 'old.fileMode', 644, 'old.fileMode', /octal string/],
      ['fileMode symbolic', 'old.fileMode', 'rw-r--r--', 'old.fileMode', /octal string/],
      ['fs with an s3 key', 'old.bucket', 'b', 'old.bucket', /unknown key "bucket"/],
      ['bucket missing', 'new.bucket', undefined, 'new.bucket', /required/],
      ['bucket empty', 'new.bucket', '', 'new.bucket', /must not be empty/],
      ['bucket with a path', 'new.bucket', 'blobs/sub', 'new.bucket', /prefix/],
      ['bucket typo', 'new.bukcet', 'b', 'new.bukcet', /did you mean "bucket"/],
      ['endpoint without scheme', 'new.endpoint', '127.0.0.1:9000', 'new.endpoint', /http/],
      ['maxSockets 0', 'new.maxSockets', 0, 'new.maxSockets', /at least 1/],
      ['maxSockets a word', 'new.maxSockets', 'many', 'new.maxSockets', /must be a number, got a string/],
      ['maxSockets fractional', 'new.maxSockets', 1.5, 'new.maxSockets', /int/],
      ['forcePathStyle yes', 'new.forcePathStyle', 'yes', 'new.forcePathStyle', /boolean/],
      [
        'checksum mode typo',
        'new.requestChecksumCalculation',
        'WHEN_REQUIRD',
        'new.requestChecksumCalculation',
        /did you mean "WHEN_REQUIRED"/,
      ],
      ['partSize too small', 'new.partSize', 1024, 'new.partSize', /at least 5242880/],
      ['prefix absolute', 'new.prefix', '/abs/', 'new.prefix', /not a valid key prefix/],
      ['prefix with ..', 'new.prefix', 'a/../b/', 'new.prefix', /not a valid key prefix/],
      [
        'secret missing',
        'new.credentials.secretAccessKey',
        undefined,
        'new.credentials.secretAccessKey',
        /required/,
      ],
      [
        'credentials typo',
        'new.credentials.acessKeyId',
        'x',
        'new.credentials.acessKeyId',
        /did you mean "accessKeyId"/,
      ],
      ['memory with a root', 'new', { type: 'memory', root: '/x' }, 'new.root', /unknown key "root"/],
      [
        'unset variable',
        'new.credentials.secretAccessKey',
        '$BS_TEST_UNSET_VAR',
        'new.credentials.secretAccessKey',
        /BS_TEST_UNSET_VAR is not set/,
      ],
    ];
    for (const [what, path, value, field, message] of cases) {
      it(what, () => {
        const err = configError(() => parseConfig(withValue(base(), path, value), dir));
        expect(err.path, err.message).to.equal(field);
        expect(err.message).to.match(message);
        expect(err.message).to.include(field);
        expect(err.code).to.equal('E_CONFIG');
      });
    }

    const mysqlCases: [string, unknown, string, RegExp][] = [
      ['a non-mysql URL', 'postgres://u@h/db', 'meta.connection', /mysql:\/\//],
      ['a port that is not a number', { host: 'h', port: 'abc' }, 'meta.connection.port', /number/],
      ['a port out of range', { host: 'h', port: 70000 }, 'meta.connection.port', /at most 65535/],
      ['a connection key typo', { host: 'h', usr: 'u' }, 'meta.connection.usr', /did you mean "user"/],
      [
        'a connection of the wrong kind',
        42,
        'meta.connection',
        /must be a string or an object, got a number/,
      ],
    ];
    for (const [what, connection, field, message] of mysqlCases) {
      it(`mysql: ${what}`, () => {
        const cfg = withValue(base(), 'meta', { client: 'mysql2', connection });
        const err = configError(() => parseConfig(cfg, dir));
        expect(err.path, err.message).to.equal(field);
        expect(err.message).to.match(message);
      });
    }

    it('reports the unknown key first when it likely explains a missing one', () => {
      const cfg = withValue(withValue(base(), 'new.bucket', undefined), 'new.bukcet', 'blobs');
      const err = configError(() => parseConfig(cfg, dir));
      expect(err.path).to.equal('new.bukcet');
      expect(err.message).to.match(/also new\.bucket: is required/);
    });

    it('a config that is not an object', () => {
      for (const v of [[], 'x', 3, null]) {
        expect(configError(() => parseConfig(v, dir)).message).to.match(/must be a JSON object/);
      }
    });

    it('requireOld and requireNew', () => {
      const onlyNew = withValue(base(), 'old', undefined);
      expect(configError(() => parseConfig(onlyNew, dir, { requireOld: true })).path).to.equal('old');
      const onlyOld = withValue(base(), 'new', undefined);
      expect(configError(() => parseConfig(onlyOld, dir, { requireNew: true })).path).to.equal('new');
      expect(parseConfig(onlyNew, dir, { requireNew: true }).config.old).to.equal(undefined);
    });

    it('a missing file names it and says -c chooses another', async () => {
      const file = join(dir, 'nope', 'blobshift.config.json');
      const err = await configErrorAsync(loadConfig(file));
      expect(err.message).to.include(file);
      expect(err.message).to.match(/not found.*-c/);
    });

    it('a directory instead of a file', async () => {
      const err = await configErrorAsync(loadConfig(dir));
      expect(err.message).to.match(/cannot read config file.*EISDIR/);
    });

    it('invalid JSON gives the line and column, never the text around it', async () => {
      const samples: [string, number, number][] = [
        ['{\n  "meta": {\n    "client": "x",\n  }\n}', 4, 3],
        [
          `{\n  "new": { "secretAccessKey": "${SECRET}" oops }\n}`,
          2,
          `  "new": { "secretAccessKey": "${SECRET}" `.length + 1,
        ],
        [`{\n  "a": 1,\n  "b": ${SECRET}\n}`, 3, 8],
        ['{\n  "a": [1, 2\n', 3, 1],
        ['', 1, 1],
        ["{'a': 1}", 1, 2],
      ];
      for (const [text, line, column] of samples) {
        const file = join(dir, `${uniqueName('bad')}.json`);
        await writeFile(file, text);
        const err = await configErrorAsync(loadConfig(file));
        expect(err.message, text).to.include(`${file}:${line}:${column}: not valid JSON`);
        expectNoSecrets(err.message);
      }
    });

    it('finds JSON error offsets where the engine gives none', () => {
      expect(jsonErrorOffset('{"a": x}')).to.equal(6);
      expect(jsonErrorOffset('{"a": tru}')).to.equal(6);
      expect(jsonErrorOffset('[1, 2] 3')).to.equal(7);
      expect(jsonErrorOffset('"abc')).to.equal(4);
      expect(jsonErrorOffset('{"a": "\\q"}')).to.equal(7);
      expect(jsonErrorOffset('{"a": [1, {"b": null}], "c": -1.5e3}')).to.equal(36);
    });
  });

  describe('secrets', () => {
    function secretConfig(): Record<string, unknown> {
      const cfg = base();
      (cfg.new as Record<string, unknown>).credentials = {
        accessKeyId: 'AKIAEXAMPLE',
        secretAccessKey: SECRET,
        sessionToken: '$BS_TEST_TOKEN',
      };
      (cfg.old as Record<string, unknown>) = {
        type: 's3',
        bucket: 'old',
        credentials: { accessKeyId: 'AKIAOLD', secretAccessKey: '$BS_TEST_SECRET' },
      };
      cfg.meta = {
        client: 'mysql2',
        connection: { host: '127.0.0.1', user: 'app', password: DB_PASSWORD, database: 'app' },
      };
      return cfg;
    }

    it('never appear in redact(config)', () => {
      const loaded = parseConfig(secretConfig(), dir);
      const text = JSON.stringify(redact(loaded.config));
      expectNoSecrets(text);
      // The access key id names the account: redacted like the secret.
      expect(text).to.not.include('AKIAEXAMPLE');
      expect(text).to.include('"accessKeyId":"[REDACTED]"');
      const viaUrl = parseConfig(
        withValue(base(), 'meta', {
          client: 'mysql2',
          connection: `mysql://app:${encodeURIComponent(URL_PASSWORD)}@db.internal:3306/app`,
        }),
        dir,
      );
      const urlText = JSON.stringify(redact(viaUrl.config));
      expectNoSecrets(urlText);
      expect(urlText).to.include('db.internal');
      // The decoded password is registered too, for messages that show it decoded.
      expect(redactString(`password was ${URL_PASSWORD}`)).to.not.include(URL_PASSWORD);
      expect(redactString(`token ${ENV_TOKEN}`)).to.not.include(ENV_TOKEN);
    });

    it('never appear in error messages', () => {
      const broken: Record<string, unknown>[] = [
        withValue(secretConfig(), 'new.credentials.secretAccesKey', SECRET),
        withValue(secretConfig(), 'new.credentials.sessionToken', 12345),
        withValue(secretConfig(), 'new.credentials', { secretAccessKey: '$BS_TEST_SECRET' }),
        withValue(secretConfig(), 'meta.connection.password', 42),
        withValue(secretConfig(), 'meta.connection.pasword', DB_PASSWORD),
        withValue(secretConfig(), 'meta.connection', `mysq://app:${URL_PASSWORD}@db/app`),
        withValue(secretConfig(), 'meta.connection', `mysql://app:${URL_PASSWORD}@db/app?x=1`),
        withValue(
          withValue(secretConfig(), 'meta.connection', `mysql://app:${URL_PASSWORD}@db/app`),
          'meta.table',
          'bad-name',
        ),
        withValue(secretConfig(), 'new.requestChecksumCalculation', SECRET),
        withValue(secretConfig(), 'old.credentials.secretAccessKey', '$BS_TEST_NOT_SET'),
      ];
      let errors = 0;
      for (const cfg of broken) {
        try {
          parseConfig(cfg, dir);
        } catch (err) {
          expect(err).to.be.instanceOf(ConfigError);
          errors++;
          expectNoSecrets((err as Error).message);
          expectNoSecrets(JSON.stringify(redact(err)));
        }
      }
      expect(errors).to.equal(broken.length - 1); // the URL with ?x=1 is valid
    });
  });

  describe('builders', () => {
    it('openMeta with sqliteMustExist refuses a missing SQLite file, naming the field', async () => {
      const cfg = withValue(base(), 'meta.connection.filename', './typo.sqlite');
      const loaded = parseConfig(cfg, dir, { sqliteMustExist: true });
      const err = await configErrorAsync(loaded.openMeta());
      expect(err.path).to.equal('meta.connection.filename');
      expect(err.message).to.include(join(dir, 'typo.sqlite'));
      expect(err.message).to.match(/does not exist/);
    });

    it('openMeta opens an existing SQLite file when it must exist, and creates one otherwise', async () => {
      const created = parseConfig(withValue(base(), 'meta.connection.filename', './made.sqlite'), dir);
      const first = await created.openMeta();
      expect(first.dialect).to.equal('sqlite');
      expect(first.table).to.equal('blob_meta');
      await first.close();
      const strictLoad = parseConfig(withValue(base(), 'meta.connection.filename', './made.sqlite'), dir, {
        sqliteMustExist: true,
      });
      const second = await strictLoad.openMeta();
      expect((await second.estimate()).count).to.equal(0);
      await second.close();
    });

    if (MYSQL_URL) {
      it('openMeta on MySQL from a URL', async () => {
        const table = uniqueName('cfg');
        const loaded = parseConfig(
          withValue(
            withValue(base(), 'meta', { client: 'mysql', connection: MYSQL_URL }),
            'meta.table',
            table,
          ),
          dir,
        );
        const meta = await loaded.openMeta();
        try {
          expect(meta.dialect).to.equal('mysql');
          await meta.add({ key: 'k', parentId: 'p', type: 't', contentLength: 1 });
          expect((await meta.get('k'))?.contentLength).to.equal(1);
        } finally {
          for (const t of [`${table}_runs`, table, `${table}_migrations`, `${table}_migrations_lock`]) {
            await meta.knex.schema.dropTableIfExists(t);
          }
          await meta.close();
        }
      });
    } else {
      announce('BLOBSHIFT_TEST_MYSQL', 'config openMeta on MariaDB/MySQL');
    }

    it('builds a MigratingBlobDB from old and new, sharing the instances', async () => {
      const loaded = parseConfig(
        { meta: base().meta, old: { type: 'memory' }, new: { type: 'memory' } },
        dir,
      );
      const db = (await loaded.buildDb()) as unknown as {
        newDb: unknown;
        oldDb: unknown;
        constructor: { name: string };
      };
      expect(db.constructor.name).to.equal('MigratingBlobDB');
      expect(db.newDb).to.equal(await loaded.buildNew());
      expect(db.oldDb).to.equal(await loaded.buildOld());
      expect(await loaded.buildDb()).to.equal(db);
      await (db as unknown as { close(): Promise<void> }).close();
    });

    it('builds the one backend there is, and refuses none', async () => {
      const onlyNew = parseConfig({ meta: base().meta, new: { type: 'memory' } }, dir);
      const db = await onlyNew.buildDb();
      expect(db).to.equal(await onlyNew.buildNew());
      expect(await onlyNew.buildOld()).to.equal(undefined);
      await db.put('a', 'x');
      expect(await db.exists('a')).to.equal(true);
      const none = parseConfig({ meta: base().meta }, dir);
      const err = await configErrorAsync(none.buildDb());
      expect(err.path).to.equal('new');
    });

    it('builds an S3 backend without touching the network', async () => {
      const loaded = parseConfig(base(), dir);
      const db = await loaded.buildNew();
      expect(db?.constructor.name).to.equal('S3BlobDB');
      await db?.close();
    });

    it('gives the knex config it opens with', () => {
      const loaded = parseConfig(withValue(base(), 'meta.pool', { max: 2 }), dir, { sqliteMustExist: true });
      expect(loaded.knexConfig()).to.deep.equal({
        client: 'better-sqlite3',
        connection: { filename: join(dir, 'blobs.sqlite'), options: { fileMustExist: true } },
        pool: { max: 2 },
      });
    });
  });

  describe('PostgreSQL metadata', () => {
    const PG_PASSWORD = 'pg-pa$$-w0rd/s3cret';

    it("takes a postgres:// URL or a connection object with knex's own options; postgres and postgresql mean pg", () => {
      const viaUrl = parseConfig(
        withValue(base(), 'meta', {
          client: 'postgresql',
          connection: 'postgres://app@db.internal:5433/app?sslmode=require',
          schema: 'media',
          searchPath: ['media', 'public'],
          pool: { min: 0, max: 8, idleTimeoutMillis: 1000, propagateCreateError: false },
          acquireConnectionTimeout: 5000,
        }),
        dir,
      );
      expect(viaUrl.config.meta).to.deep.include({ client: 'pg', schema: 'media', table: 'blob_meta' });
      expect(viaUrl.knexConfig()).to.deep.equal({
        client: 'pg',
        connection: 'postgres://app@db.internal:5433/app?sslmode=require',
        searchPath: ['media', 'public'],
        pool: { min: 0, max: 8, idleTimeoutMillis: 1000, propagateCreateError: false },
        acquireConnectionTimeout: 5000,
      });
      expect(describeMeta(viaUrl.config)).to.equal('PostgreSQL db.internal:5433/app (table media.blob_meta)');
      const viaObject = parseConfig(
        withValue(base(), 'meta', {
          client: 'postgres',
          connection: {
            host: '$BS_TEST_DB_HOST',
            port: '5432',
            user: 'app',
            database: 'app',
            ssl: { rejectUnauthorized: 'true', ca: '-----BEGIN CERTIFICATE-----' },
            application_name: 'media-backfill',
            statement_timeout: 60000,
            keepAlive: true,
          },
          searchPath: 'media',
        }),
        dir,
      );
      expect(viaObject.config.meta.connection).to.deep.equal({
        host: 'db.internal',
        port: 5432,
        user: 'app',
        database: 'app',
        ssl: { rejectUnauthorized: true, ca: '-----BEGIN CERTIFICATE-----' },
        application_name: 'media-backfill',
        statement_timeout: 60000,
        keepAlive: true,
      });
      expect(describeMeta(viaObject.config)).to.equal('PostgreSQL db.internal:5432/app (table blob_meta)');
      // knex's own options are accepted on the other clients too.
      const sqlite = parseConfig(
        withValue(withValue(base(), 'meta.useNullAsDefault', true), 'meta.pool', { max: 1 }),
        dir,
      );
      expect(sqlite.knexConfig()).to.deep.include({ useNullAsDefault: true, pool: { max: 1 } });
    });

    it('names the field of a bad PostgreSQL setting', () => {
      const pg = (over: Record<string, unknown>) =>
        withValue(base(), 'meta', { client: 'pg', connection: 'postgres://app@db/app', ...over });
      for (const [cfg, path, message] of [
        [
          pg({ connection: 'mysql://app@db/app' }),
          'meta.connection',
          /postgres:\/\/user@host:port\/database URL/,
        ],
        [
          pg({ connection: { host: 'db', aplication_name: 'x' } }),
          'meta.connection.aplication_name',
          /did you mean "application_name"/,
        ],
        [pg({ connection: { host: 'db', ssl: 'yes' } }), 'meta.connection.ssl', /boolean|object/],
        [pg({ schema: 'my-schema' }), 'meta.schema', /plain SQL name/],
        [pg({ searchPath: [] }), 'meta.searchPath', /at least 1/],
        [pg({ shema: 'x' }), 'meta.shema', /did you mean "schema"/],
        [
          withValue(base(), 'meta', { client: 'mysql2', connection: 'mysql://app@db/app', schema: 'x' }),
          'meta.schema',
          /unknown key "schema"/,
        ],
      ] as [Record<string, unknown>, string, RegExp][]) {
        const err = configError(() => parseConfig(cfg, dir));
        expect(err.path, JSON.stringify(cfg.meta)).to.equal(path);
        expect(err.message, JSON.stringify(cfg.meta)).to.match(message);
      }
    });

    it('never shows the password of a URL, of its query, of the object, or of PGPASSWORD', () => {
      const saved = process.env.PGPASSWORD;
      process.env.PGPASSWORD = 'from-the-env-Pg55word';
      try {
        const configs = [
          { client: 'pg', connection: `postgres://app:${encodeURIComponent(PG_PASSWORD)}@db/app` },
          { client: 'pg', connection: `postgresql://app@db/app?password=${encodeURIComponent(PG_PASSWORD)}` },
          { client: 'pg', connection: { host: 'db', user: 'app', password: PG_PASSWORD } },
          {
            client: 'pg',
            connection: { host: 'db', ssl: { key: PG_PASSWORD, passphrase: 'pass-phrase-123' } },
          },
          { client: 'pg', connection: 'postgres://app@db/app' },
        ];
        for (const meta of configs) {
          const loaded = parseConfig(withValue(base(), 'meta', meta), dir);
          const text =
            JSON.stringify(redact(loaded.config)) +
            describeMeta(loaded.config) +
            redactString(`connecting with ${PG_PASSWORD} and ${process.env.PGPASSWORD}`);
          expect(text, JSON.stringify(meta)).to.not.include(PG_PASSWORD);
          expect(text, JSON.stringify(meta)).to.not.include(encodeURIComponent(PG_PASSWORD));
          expect(text, JSON.stringify(meta)).to.not.include('from-the-env-Pg55word');
          expect(text).to.not.include('pass-phrase-123');
        }
      } finally {
        if (saved === undefined) delete process.env.PGPASSWORD;
        else process.env.PGPASSWORD = saved;
      }
    });

    if (PG_URL) {
      it('openMeta on PostgreSQL from a URL, in a named schema', async () => {
        const schema = uniqueName('cfg_');
        const loaded = parseConfig(
          withValue(base(), 'meta', { client: 'pg', connection: PG_URL, schema }),
          dir,
        );
        const meta0 = await configErrorAsync(loaded.openMeta());
        expect(meta0.path).to.equal('meta.schema');
        const admin = await createKnex({ client: 'pg', connection: PG_URL });
        try {
          await admin.raw('CREATE SCHEMA ??', [schema]);
          const meta = await loaded.openMeta();
          try {
            expect(meta.dialect).to.equal('pg');
            expect(meta.schema).to.equal(schema);
            await meta.add({ key: 'k', parentId: 'p', type: 't', contentLength: 1 });
            expect((await meta.get('k'))?.contentLength).to.equal(1);
          } finally {
            await meta.close();
          }
        } finally {
          await admin.raw('DROP SCHEMA IF EXISTS ?? CASCADE', [schema]);
          await admin.destroy();
        }
      });
    } else {
      announce('BLOBSHIFT_TEST_PG', 'config openMeta on PostgreSQL');
    }
  });

  describe('describeBackend and sameLocation', () => {
    const s3 = (over: Record<string, unknown> = {}): BackendConfig =>
      ({ type: 's3', bucket: 'b', endpoint: 'http://127.0.0.1:9000', ...over }) as BackendConfig;

    it('describes backends without secrets', () => {
      expect(describeBackend({ type: 'fs', root: '/srv/blobs' })).to.equal('fs:/srv/blobs');
      expect(describeBackend(s3({ prefix: 'app/' }))).to.equal('s3://b/app/ at http://127.0.0.1:9000');
      expect(describeBackend(s3({ endpoint: undefined, region: 'eu-west-1' }))).to.equal(
        's3://b/ at AWS S3 (eu-west-1)',
      );
      expect(describeBackend({ type: 'memory' })).to.equal('memory');
      expect(
        describeBackend(
          s3({ endpoint: 'http://user:pw-in-endpoint@host:9000', credentials: { secretAccessKey: SECRET } }),
        ),
      ).to.not.include('pw-in-endpoint');
    });

    it('finds the same or nested filesystem roots, symlinks included', async () => {
      const a = join(dir, 'blobs');
      await mkdir(join(a, 'sub'), { recursive: true });
      await mkdir(join(dir, 'blobs2'), { recursive: true });
      await symlink(a, join(dir, 'link'));
      const fs = (root: string): BackendConfig => ({ type: 'fs', root });
      expect(sameLocation(fs(a), fs(a))).to.equal(true);
      expect(sameLocation(fs(a), fs(`${a}/`))).to.equal(true);
      expect(sameLocation(fs(a), fs(join(a, 'sub')))).to.equal(true);
      expect(sameLocation(fs(join(a, 'sub')), fs(a))).to.equal(true);
      expect(sameLocation(fs(join(dir, 'link')), fs(a))).to.equal(true);
      expect(sameLocation(fs(a), fs(join(dir, 'blobs2')))).to.equal(false);
      expect(sameLocation(fs(a), fs(join(dir, 'elsewhere')))).to.equal(false);
    });

    it('finds the same bucket on the same endpoint with overlapping prefixes', () => {
      expect(sameLocation(s3(), s3())).to.equal(true);
      expect(sameLocation(s3({ prefix: '' }), s3({ prefix: 'new/' }))).to.equal(true);
      expect(sameLocation(s3({ prefix: 'a' }), s3({ prefix: 'a/b/' }))).to.equal(true);
      expect(sameLocation(s3({ prefix: 'a' }), s3({ prefix: 'ab' }))).to.equal(false);
      expect(sameLocation(s3({ prefix: 'old/' }), s3({ prefix: 'new/' }))).to.equal(false);
      expect(sameLocation(s3(), s3({ bucket: 'c' }))).to.equal(false);
      expect(sameLocation(s3(), s3({ endpoint: 'http://127.0.0.1:9001' }))).to.equal(false);
      expect(sameLocation(s3(), s3({ endpoint: 'HTTP://127.0.0.1:9000/' }))).to.equal(true);
      expect(sameLocation(s3({ endpoint: undefined }), s3({ endpoint: undefined, region: 'x' }))).to.equal(
        true,
      );
      expect(sameLocation(s3(), { type: 'fs', root: '/b' })).to.equal(false);
      expect(sameLocation({ type: 'memory' }, { type: 'memory' })).to.equal(false);
    });
  });

  it('suggests the closest allowed word', () => {
    expect(didYouMean('bukcet', ['bucket', 'prefix'])).to.equal('bucket');
    expect(didYouMean('ROOT', ['root', 'type'])).to.equal('root');
    expect(didYouMean('zzzzzz', ['bucket', 'prefix'])).to.equal(undefined);
    expect(didYouMean('gcs', ['fs', 's3', 'memory'])).to.equal(undefined);
    expect(didYouMean('nwe', ['meta', 'old', 'new'])).to.equal('new');
    expect(didYouMean('mmeory', ['fs', 's3', 'memory'])).to.equal('memory');
  });
});
