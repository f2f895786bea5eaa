/** The `s3` backend's config section and registry entry. The SDK loads only when a backend is built. */
import { z } from 'zod';
import { bool, int, nonEmpty, strict } from '../../contract/config-schema.js';
import { ConfigError } from '../../contract/errors.js';
import { keyProblem } from '../../contract/keys.js';
import { redactString } from '../../contract/redact.js';
import type { BackendEntry } from '../entry.js';
import { S3_ERROR_KNOWLEDGE } from './errors.js';
import { CANNED_ACLS, S3BlobDB } from './index.js';

const credentialsSchema = strict({
  accessKeyId: nonEmpty,
  secretAccessKey: nonEmpty,
  sessionToken: nonEmpty.optional(),
});

const checksumMode = z.enum(['WHEN_SUPPORTED', 'WHEN_REQUIRED']);

const schema = strict({
  type: z.literal('s3'),
  bucket: nonEmpty.regex(/^[^/\s]+$/, {
    error: 'must be a bucket name (no "/" or spaces); use prefix for a path',
  }),
  prefix: z.string().optional(),
  endpoint: z
    .string()
    .refine((s) => /^https?:\/\/[^/]/.test(s), { error: 'must be an http:// or https:// URL' })
    .optional(),
  region: nonEmpty.optional(),
  forcePathStyle: bool.optional(),
  credentials: credentialsSchema.optional(),
  requestChecksumCalculation: checksumMode.optional(),
  responseChecksumValidation: checksumMode.optional(),
  maxSockets: int(1).optional(),
  connectionTimeoutMs: int(1).optional(),
  requestTimeoutMs: int(1).optional(),
  maxAttempts: int(1, 100).optional(),
  partSize: int(5 * 1024 * 1024).optional(),
  queueSize: int(1, 1000).optional(),
  /** A canned ACL on every object written (puts, multipart, server-side copies). */
  acl: z.enum(CANNED_ACLS).optional(),
  /** Read each object's ACL with its info (one GetObjectAcl more a blob), so copies carry a public one. */
  readAcl: bool.optional(),
});

export type S3BackendConfig = z.output<typeof schema>;

function endpointId(endpoint: string | undefined): string {
  if (endpoint === undefined) return 'aws';
  try {
    const u = new URL(endpoint);
    return `${u.protocol}//${u.host}`.toLowerCase();
  } catch {
    return endpoint.toLowerCase();
  }
}

function normalPrefix(prefix: string | undefined): string {
  if (prefix === undefined || prefix === '') return '';
  return prefix.endsWith('/') ? prefix : `${prefix}/`;
}

export const s3Entry: BackendEntry<S3BackendConfig> = {
  type: 's3',
  schema,
  normalize(parsed, { path }) {
    const b = parsed as S3BackendConfig;
    if (b.prefix !== undefined && b.prefix !== '') {
      const probe = b.prefix.endsWith('/') ? `${b.prefix}x` : b.prefix;
      const problem = keyProblem(probe);
      if (problem !== undefined)
        throw new ConfigError(`${path}.prefix`, `is not a valid key prefix: ${problem}`);
    }
    return b;
  },
  async create(cfg) {
    const clientConfig = {
      ...(cfg.endpoint !== undefined ? { endpoint: cfg.endpoint } : {}),
      ...(cfg.region !== undefined ? { region: cfg.region } : {}),
      ...(cfg.forcePathStyle !== undefined ? { forcePathStyle: cfg.forcePathStyle } : {}),
      // A copy: the SDK annotates the credentials object it is given.
      ...(cfg.credentials !== undefined ? { credentials: { ...cfg.credentials } } : {}),
      ...(cfg.requestChecksumCalculation !== undefined
        ? { requestChecksumCalculation: cfg.requestChecksumCalculation }
        : {}),
      ...(cfg.responseChecksumValidation !== undefined
        ? { responseChecksumValidation: cfg.responseChecksumValidation }
        : {}),
      ...(cfg.maxAttempts !== undefined ? { maxAttempts: cfg.maxAttempts } : {}),
    };
    return new S3BlobDB({
      bucket: cfg.bucket,
      ...(cfg.prefix !== undefined ? { prefix: cfg.prefix } : {}),
      clientConfig,
      ...(cfg.maxSockets !== undefined ? { maxSockets: cfg.maxSockets } : {}),
      ...(cfg.connectionTimeoutMs !== undefined ? { connectionTimeoutMs: cfg.connectionTimeoutMs } : {}),
      ...(cfg.requestTimeoutMs !== undefined ? { requestTimeoutMs: cfg.requestTimeoutMs } : {}),
      ...(cfg.partSize !== undefined ? { partSize: cfg.partSize } : {}),
      ...(cfg.queueSize !== undefined ? { queueSize: cfg.queueSize } : {}),
      ...(cfg.acl !== undefined ? { acl: cfg.acl } : {}),
      ...(cfg.readAcl !== undefined ? { readAcl: cfg.readAcl } : {}),
    });
  },
  describe(cfg) {
    const where =
      cfg.endpoint !== undefined
        ? ` at ${redactString(cfg.endpoint)}`
        : ` at AWS S3${cfg.region !== undefined ? ` (${cfg.region})` : ''}`;
    return `s3://${cfg.bucket}/${cfg.prefix ?? ''}${where}`;
  },
  /** The same endpoint and bucket with overlapping prefixes. */
  sameLocation(a, b) {
    if (endpointId(a.endpoint) !== endpointId(b.endpoint) || a.bucket !== b.bucket) return false;
    const pa = normalPrefix(a.prefix);
    const pb = normalPrefix(b.prefix);
    return pa.startsWith(pb) || pb.startsWith(pa);
  },
  errors: S3_ERROR_KNOWLEDGE,
};
