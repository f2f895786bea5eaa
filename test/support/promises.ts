import { Readable } from 'node:stream';
import { expect } from 'chai';

/** What a promise rejects with; fails the test when it resolves. */
export async function rejectionOf(p: Promise<unknown>): Promise<unknown> {
  let value: unknown;
  try {
    value = await p;
  } catch (err) {
    return err;
  }
  if (value instanceof Readable) value.destroy();
  return expect.fail(
    `expected a rejection, got ${value instanceof Readable ? 'a stream' : JSON.stringify(value)}`,
  );
}
