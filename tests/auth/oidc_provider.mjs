// A real OpenID Connect provider (oidc-provider) for Chute's identity tests.
//
//   node oidc_provider.mjs CONFIG.json
//
// CONFIG: {"port", "keys": [private JWKs], "resources": [audiences it issues tokens for],
//          "clients": [{"id", "secret", "alg", "name"?, "clock"?}],
//          "browser_clients"?: [{"id", "alg", "redirect_uris"}]}
// Each client gets JWT access tokens through the client credentials grant (no browser),
// signed with its `alg`; its tokens' `sub` is its id, and `preferred_username` its `name`.
// A browser client is a page (no secret) that signs a person in: the authorization code
// flow with PKCE, through the provider's own development login form, where any name
// signs in; that person's tokens' `sub` and `preferred_username` are the name typed.
// `clock` shifts the times in its tokens: "expired" (exp 10 minutes ago) or "future" (nbf
// in 10 minutes), so the tests need not wait for a token to age.
// Prints `ready <issuer>` once it listens. GET /_test/counts gives the requests per path
// so far (the tests count how often Chute fetches the keys).
import { readFileSync } from "node:fs";
import { createServer } from "node:http";

import Provider, { errors } from "oidc-provider";

const config = JSON.parse(readFileSync(process.argv[2], "utf8"));
const issuer = `http://127.0.0.1:${config.port}`;
const browserClients = config.browser_clients ?? [];
const clients = new Map([...config.clients, ...browserClients].map((client) => [client.id, client]));
const now = () => Math.floor(Date.now() / 1000);

const provider = new Provider(issuer, {
  jwks: { keys: config.keys },
  clients: [
    ...config.clients.map((client) => ({
      client_id: client.id,
      client_secret: client.secret,
      grant_types: ["client_credentials"],
      redirect_uris: [],
      response_types: [],
    })),
    ...browserClients.map((client) => ({
      client_id: client.id,
      token_endpoint_auth_method: "none",
      grant_types: ["authorization_code"],
      redirect_uris: client.redirect_uris,
      response_types: ["code"],
    })),
  ],
  features: {
    devInteractions: { enabled: browserClients.length > 0 },
    clientCredentials: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: () => config.resources[0],
      useGrantedResource: () => true,
      getResourceServerInfo(ctx, resource, client) {
        if (!config.resources.includes(resource)) {
          throw new errors.InvalidTarget();
        }
        return {
          scope: "upload",
          audience: resource,
          accessTokenFormat: "jwt",
          accessTokenTTL: 300,
          jwt: { sign: { alg: clients.get(client.clientId).alg } },
        };
      },
    },
  },
  extraTokenClaims(ctx, token) {
    if (token.accountId) {
      return { preferred_username: token.accountId };
    }
    const name = clients.get(token.clientId)?.name;
    return name === undefined ? undefined : { preferred_username: name };
  },
  formats: {
    customizers: {
      jwt(ctx, token, jwt) {
        const clock = clients.get(token.clientId)?.clock;
        if (clock === "expired") {
          jwt.payload.iat = now() - 3600;
          jwt.payload.exp = now() - 600;
        } else if (clock === "future") {
          jwt.payload.nbf = now() + 600;
        }
      },
    },
  },
});

const counts = {};
const handle = provider.callback();
const server = createServer((req, res) => {
  const path = new URL(req.url, issuer).pathname;
  if (path === "/_test/counts") {
    res.setHeader("Content-Type", "application/json");
    res.end(JSON.stringify(counts));
    return;
  }
  counts[path] = (counts[path] ?? 0) + 1;
  handle(req, res);
});
server.listen(config.port, "127.0.0.1", () => {
  console.log(`ready ${issuer}`);
});
for (const signal of ["SIGTERM", "SIGINT"]) {
  process.on(signal, () => server.close(() => process.exit(0)));
}
