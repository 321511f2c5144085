// @medplum/core reads WebSocket.CLOSING / WebSocket.CLOSED when it loads. Node 22+ has a global
// WebSocket; Node 20 only with --experimental-websocket. The test server never opens a
// WebSocket, so a stand-in with the constants lets `node server.mjs` run on either without flags.
// Imported first by server.mjs: ES modules are evaluated in import order.
if (typeof globalThis.WebSocket === 'undefined') {
  globalThis.WebSocket = class WebSocket {
    static CONNECTING = 0;
    static OPEN = 1;
    static CLOSING = 2;
    static CLOSED = 3;

    constructor() {
      throw new Error('WebSocket is not available in the FHIR test server');
    }
  };
}
