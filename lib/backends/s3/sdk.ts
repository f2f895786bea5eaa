/**
 * The AWS SDK, loaded on first use rather than when this backend's module
 * loads: an application that imports blobshift for the filesystem backend
 * never pays for it. Everything in this backend takes the SDK's classes from
 * the one `Sdk` object here, so a client and the `instanceof` checks made on
 * its errors always come from the same module.
 *
 * `loadSdk()` is the way in (`await import(…)`, cached). `sdkNow()` serves
 * the few synchronous entry points (`createS3Client`, `S3BlobDB#client`): it
 * takes the modules with `require`, which yields the very module objects
 * `import` does, because these packages' entry for `import` is their
 * CommonJS build (no `exports` map: Node reads `main`), and Node shares one
 * instance of a CommonJS module between `require` and `import`.
 */
import { createRequire } from 'node:module';
import type * as ClientS3 from '@aws-sdk/client-s3';
import type * as NodeHttpHandler from '@smithy/node-http-handler';
import type * as ProtocolHttp from '@smithy/protocol-http';

export interface Sdk {
  /** `@aws-sdk/client-s3`: the client, commands and `S3ServiceException`. */
  readonly s3: typeof ClientS3;
  /** `@smithy/node-http-handler`: the HTTP handler with its keep-alive agents. */
  readonly http: typeof NodeHttpHandler;
  /** `@smithy/protocol-http`: the `HttpRequest` the lean path signs and sends. */
  readonly protocol: typeof ProtocolHttp;
}

let sdk: Sdk | undefined;
let loading: Promise<Sdk> | undefined;

/** The SDK, loaded on the first call (every later call answers from the cache). */
export function loadSdk(): Promise<Sdk> {
  if (sdk !== undefined) return Promise.resolve(sdk);
  loading ??= Promise.all([
    import('@aws-sdk/client-s3'),
    import('@smithy/node-http-handler'),
    import('@smithy/protocol-http'),
  ]).then(
    ([s3, http, protocol]) => {
      sdk ??= { s3, http, protocol };
      return sdk;
    },
    (err: unknown) => {
      loading = undefined;
      throw err;
    },
  );
  return loading;
}

/** The SDK now, for a synchronous entry point: loaded already, or loaded here (see the module comment). */
export function sdkNow(): Sdk {
  if (sdk === undefined) {
    const require = createRequire(import.meta.url);
    sdk = {
      s3: require('@aws-sdk/client-s3') as typeof ClientS3,
      http: require('@smithy/node-http-handler') as typeof NodeHttpHandler,
      protocol: require('@smithy/protocol-http') as typeof ProtocolHttp,
    };
  }
  return sdk;
}
