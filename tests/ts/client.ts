// A TypeScript client of `costwarden serve`, typed only by what openapi-typescript
// generated from /openapi.json (./api.ts): reserve, then commit, then read back.
// tests/python/test_server_typescript.py type-checks it with tsc --strict and runs it.
import type { components, paths } from "./api";

// the two Node globals used here (no @types/node needed)
declare const process: { env: Record<string, string | undefined>; exit(code: number): never };

type ReserveBody = paths["/v1/reservations"]["post"]["requestBody"]["content"]["application/json"];
type Reservation = components["schemas"]["Reservation"];
type CommitBody =
  paths["/v1/reservations/{reservation_id}/commit"]["post"]["requestBody"]["content"]["application/json"];
type CommitResult = components["schemas"]["CommitResult"];
type ErrorBody = components["schemas"]["ErrorBody"];

const base = process.env.COSTWARDEN_URL ?? "http://127.0.0.1:8787";
const token = process.env.COSTWARDEN_TOKEN ?? "";

async function call<T>(method: string, path: string, body?: unknown): Promise<[number, T]> {
  const response = await fetch(base + path, {
    method,
    headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  return [response.status, (await response.json()) as T];
}

async function main(): Promise<void> {
  const request: ReserveBody = {
    org_id: "acme",
    workspace_id: "ws-platform",
    model: "openai/gpt-4o",
    usage: { input_tokens: 1000, output_tokens: 500 },
    user_id: "alice",
    ttl_seconds: 120,
  };
  const [status, held] = await call<Reservation | ErrorBody>("POST", "/v1/reservations", request);
  if (status !== 201 || !("reservation_id" in held)) {
    throw new Error(`reserve: ${status} ${JSON.stringify(held)}`);
  }
  const amount: number = held.amount_micros; // integer micros
  const commit: CommitBody = { usage: { input_tokens: 800, output_tokens: 200 } };
  const [commitStatus, done] = await call<CommitResult>(
    "POST",
    `/v1/reservations/${held.reservation_id}/commit`,
    commit,
  );
  if (commitStatus !== 200) {
    throw new Error(`commit: ${commitStatus} ${JSON.stringify(done)}`);
  }
  const [, denied] = await call<Reservation>("POST", "/v1/reservations", {
    ...request,
    usage: { input_tokens: 100_000_000 },
  } satisfies ReserveBody);
  console.log(
    JSON.stringify({
      reservation_id: held.reservation_id,
      held_micros: amount,
      charged_micros: done.charged_micros,
      released_micros: done.released_micros,
      entry_seq: done.entry_seq,
      denied_status: denied.status,
      denied_codes: denied.reasons.map((r) => r.code),
    }),
  );
}

main().catch((err: unknown) => {
  console.error(err);
  process.exit(1);
});
