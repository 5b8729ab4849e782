// Runs @vercel/cosmosdb-server on loopback for the tests.
//
//   node server.js [port]
//
// Listens on 127.0.0.1 (port 0, the default, lets the system choose), prints
// "port <number>" on a line of its own once it accepts connections, and exits
// when its standard input closes, so that the server never outlives the test
// run that started it. Keep-alive matters: without it every request opens a
// new TLS connection and the server is about twenty times slower.
//
// Fault tests steer it with lines on standard input, each answered by a line:
//   stop            close the port and every open connection ("stopped"); the
//                   data stays in memory, as if the server were restarted
//   start           listen on the same port again ("started")
//   throttle <p>    answer a share p (0 to 1) of data requests with 429 and a
//                   short retry-after, as Cosmos DB does when throttling ("throttle <p>")
"use strict";

const readline = require("readline");
const { createHttpsServer } = require("@vercel/cosmosdb-server");

const requested = process.argv[2] === undefined ? 0 : Number(process.argv[2]);
if (!Number.isInteger(requested) || requested < 0 || requested > 65535) {
  console.error(`server.js: the port must be a number from 0 to 65535, got ${process.argv[2]}`);
  process.exit(2);
}

const server = createHttpsServer({ keepAlive: true });
const sockets = new Set();
let port = requested;
let throttleShare = 0;

server.on("connection", (socket) => {
  sockets.add(socket);
  socket.on("close", () => sockets.delete(socket));
});

// Put the throttle in front of the package's own request handler.
const handlers = server.listeners("request");
server.removeAllListeners("request");
server.on("request", (request, response) => {
  const accountRead = request.method === "GET" && (request.url === "/" || request.url === "");
  if (throttleShare > 0 && !accountRead && Math.random() < throttleShare) {
    request.resume();
    response.writeHead(429, {
      "content-type": "application/json",
      "x-ms-retry-after-ms": "5",
      "x-ms-substatus": "3200",
    });
    response.end(JSON.stringify({ code: "TooManyRequests", message: "injected by server.js" }));
    return;
  }
  for (const handler of handlers) handler.call(server, request, response);
});

server.on("error", (error) => {
  console.error(`server.js: ${error.message}`);
  process.exit(1);
});

server.listen(requested, "127.0.0.1", () => {
  port = server.address().port;
  // The package builds a new, empty account on every "listening" event; drop
  // its handler now, so that a "start" after a "stop" keeps the data.
  server.removeAllListeners("listening");
  process.stdout.write(`port ${port}\n`);
});

function command(line) {
  const [name, value] = line.trim().split(/\s+/);
  if (name === "stop") {
    server.close(() => undefined);
    for (const socket of sockets) socket.destroy();
    process.stdout.write("stopped\n");
  } else if (name === "start" && server.listening) {
    process.stdout.write("started\n");
  } else if (name === "start") {
    server.listen(port, "127.0.0.1", () => process.stdout.write("started\n"));
  } else if (name === "throttle" && Number(value) >= 0 && Number(value) <= 1) {
    throttleShare = Number(value);
    process.stdout.write(`throttle ${throttleShare}\n`);
  } else if (name) {
    process.stdout.write(`unknown command: ${line.trim()}\n`);
  }
}

function quit() {
  server.close();
  process.exit(0);
}

const input = readline.createInterface({ input: process.stdin });
input.on("line", command);
input.on("close", quit);
process.stdin.on("error", quit);
process.on("SIGTERM", quit);
process.on("SIGINT", quit);
