// bench/uws/server.js — the uWebSockets reference for bench/uws.sh: a
// broadcast server on uWebSockets.js (C++ uWS and uSockets under Node's
// event loop) with the same semantics as ours for a raw client: every
// message a client sends goes to every other client (ws.publish skips the
// sender), compression off, 64 KiB messages, 1 MiB of backpressure per
// socket, idle timeout 60 s (uWS pings at half of it, as we do).
//
// usage: node bench/uws/server.js [PORT]   (0 or none: any free port)
// It prints the ws:// URL it listens on, as broadcast-server does.
'use strict';
const uWS = require('@trufflesuite/uws-js-unofficial');

const port = parseInt(process.argv[2] || '0', 10);
uWS.App()
  .ws('/*', {
    compression: uWS.DISABLED,
    maxPayloadLength: 64 * 1024,
    maxBackpressure: 1024 * 1024,
    idleTimeout: 60,
    sendPingsAutomatically: true,
    open: (ws) => ws.subscribe('room'),
    message: (ws, message, isBinary) => ws.publish('room', message, isBinary),
  })
  .listen('127.0.0.1', port, (socket) => {
    if (!socket) {
      console.error('bench/uws/server.js: cannot listen on 127.0.0.1:' + port);
      process.exit(1);
    }
    console.log('listening on ws://127.0.0.1:' + uWS.us_socket_local_port(socket) + '/ws');
  });
