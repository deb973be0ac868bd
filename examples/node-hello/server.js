// Gilgal's bundled Node example: serves on $PORT, says which release answered, and closes
// cleanly on SIGTERM so a rollout can drain it.
const http = require("http");

const port = Number(process.env.PORT || 3000);
const release = process.env.GILGAL_RELEASE || "dev";

const server = http.createServer((req, res) => {
  const body = JSON.stringify({ message: "Hello from Node on Gilgal", release, path: req.url });
  res.writeHead(200, { "content-type": "application/json", "content-length": Buffer.byteLength(body) });
  res.end(body);
});

server.listen(port, process.env.HOST || "127.0.0.1", () => {
  console.log(JSON.stringify({ level: "info", msg: `listening on ${port}`, release }));
});

process.on("SIGTERM", () => server.close(() => process.exit(0)));
