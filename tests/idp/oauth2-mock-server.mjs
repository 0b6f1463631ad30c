// oauth2-mock-server on 127.0.0.1:<port> (argv[2]) for tests/tests/oidc.rs:
// discovery, a JWKS with one generated RS256 key, and a client_credentials
// /token endpoint. The token's `sub` is the requesting client's id, as many
// providers do for machine clients. argv[3], if given, is the issuer URL the
// tokens name (a provider behind another discovery document). Prints
// "ready" once listening.
import { OAuth2Server } from 'oauth2-mock-server';

const port = Number(process.argv[2]);
const server = new OAuth2Server();
await server.issuer.keys.generate('RS256');
server.service.on('beforeTokenSigning', (token, req) => {
  const client = req.body?.client_id;
  if (client) {
    token.payload.sub = client;
  }
});
await server.start(port, '127.0.0.1');
// Named by address, not "localhost": what xgate is configured with.
server.issuer.url = process.argv[3] ?? `http://127.0.0.1:${port}`;
console.log('ready');
