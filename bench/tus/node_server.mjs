// @tus/server with @tus/file-store (npm, the tus project's Node server) as a peer for
// bench/tus_bench.py: the library's own defaults, uploads stored as `<dir>/<id>`
// under the creation URL `/files/`.
//
//     node bench/tus/node_server.mjs --port 8003 --dir /path/on/chutes/disk

import { parseArgs } from 'node:util';

import { FileStore } from '@tus/file-store';
import { Server } from '@tus/server';

const { values } = parseArgs({
  options: {
    host: { type: 'string', default: '127.0.0.1' },
    port: { type: 'string' },
    dir: { type: 'string' },
  },
});
if (!values.port || !values.dir) {
  console.error('usage: node_server.mjs --port N --dir DIR');
  process.exit(2);
}

const server = new Server({ path: '/files', datastore: new FileStore({ directory: values.dir }) });
const listening = server.listen({ host: values.host, port: Number(values.port) }, () => {
  console.log(`@tus/server listening on ${values.host}:${values.port}, storing in ${values.dir}`);
});

// The benchmark stops its servers with SIGTERM; close so the process ends at once.
process.on('SIGTERM', () => {
  listening.close(() => process.exit(0));
  listening.closeAllConnections();
});
