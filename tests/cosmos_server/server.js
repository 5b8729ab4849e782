// Runs @vercel/cosmosdb-server on loopback for the tests.
//
//   node server.js [port]
//
// Listens on 127.0.0.1 (port 0, the default, lets the system choose), prints
// "port <number>" on a line of its own once it accepts connections, and exits
// when its standard input closes, so that the server never outlives the test
// run that started it. Keep-alive matters: without it every request opens a
// new TLS connection and the server is about twenty times slower.
"use strict";

const { createHttpsServer } = require("@vercel/cosmosdb-server");

const requested = process.argv[2] === undefined ? 0 : Number(process.argv[2]);
if (!Number.isInteger(requested) || requested < 0 || requested > 65535) {
  console.error(`server.js: the port must be a number from 0 to 65535, got ${process.argv[2]}`);
  process.exit(2);
}

const server = createHttpsServer({ keepAlive: true });

server.on("error", (error) => {
  console.error(`server.js: ${error.message}`);
  process.exit(1);
});

server.listen(requested, "127.0.0.1", () => {
  process.stdout.write(`port ${server.address().port}\n`);
});

function stop() {
  server.close();
  process.exit(0);
}

process.stdin.on("end", stop);
process.stdin.on("close", stop);
process.stdin.on("error", stop);
process.stdin.resume();
process.on("SIGTERM", stop);
process.on("SIGINT", stop);
