// Must NOT type-check: money is an integer of micros, never a string, and bodies take
// no field the API does not know (tests/python/test_server_typescript.py).
import type { paths } from "./api";

type BudgetPatch =
  paths["/v1/orgs/{org}/budgets/{scope_kind}/{scope_id}"]["patch"]["requestBody"]["content"]["application/json"];

export const wrongType: BudgetPatch = { period: "day", limit: "25.00" };
export const unknownField: BudgetPatch = { period: "day", limit: 1, currency: "USD" };
