// Validate an AsyncAPI document with @asyncapi/parser; print the diagnostics as JSON lines and
// exit 1 if any is an error (severity 0). Used by tests/conformance/test_asyncapi.py.
import { readFileSync } from "node:fs";
import { Parser } from "@asyncapi/parser";

const path = process.argv[2];
const parser = new Parser();
const { document, diagnostics } = await parser.parse(readFileSync(path, "utf8"));
for (const d of diagnostics) {
  console.log(JSON.stringify({ severity: d.severity, code: d.code, message: d.message,
                               path: d.path.join(".") }));
}
const errors = diagnostics.filter((d) => d.severity === 0);
if (!document || errors.length) {
  console.error(`${path}: ${errors.length} error(s)`);
  process.exit(1);
}
console.error(`${path}: valid AsyncAPI ${document.version()}`);
