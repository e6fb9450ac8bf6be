// uploader.d.ts is written by hand: it must declare what uploader.js exports, no more and
// no less, down to the members of its classes. Read with the TypeScript compiler pinned
// in examples/typescript (`npm ci` there first; the Makefile's test target does).
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import path from "node:path";
import { test } from "node:test";
import { fileURLToPath } from "node:url";

import * as uploader from "../../chute/web/uploader.js";

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
const ts = createRequire(path.join(ROOT, "examples/typescript/package.json"))("typescript");
const DECLARATIONS = path.join(ROOT, "chute/web/uploader.d.ts");

/** Names of the values the declarations export, and each class's member names. */
function declared() {
  const source = ts.createSourceFile(DECLARATIONS, readFileSync(DECLARATIONS, "utf8"), ts.ScriptTarget.Latest);
  const values = [];
  const classes = {};
  const exported = (node) => node.modifiers?.some((m) => m.kind === ts.SyntaxKind.ExportKeyword);
  for (const node of source.statements) {
    if (!exported(node)) continue;
    if (ts.isVariableStatement(node)) {
      for (const d of node.declarationList.declarations) values.push(d.name.text);
    } else if (ts.isFunctionDeclaration(node)) {
      values.push(node.name.text);
    } else if (ts.isClassDeclaration(node)) {
      values.push(node.name.text);
      const members = node.members.filter((m) => m.name).map((m) => m.name.text);
      classes[node.name.text] = [...new Set(members)].sort();
    }
  }
  return { values: [...new Set(values)].sort(), classes };
}

/** A class's own public members: its prototype's, and the fields its constructor gives. */
function membersOf(cls, instance, base) {
  const baseFields = new Set(Object.getOwnPropertyNames(base)); // an Error's message, stack
  const fields = Object.getOwnPropertyNames(instance).filter((n) => !baseFields.has(n));
  const methods = Object.getOwnPropertyNames(cls.prototype).filter((n) => n !== "constructor");
  return [...new Set([...methods, ...fields])].sort();
}

test("every export of uploader.js is declared, and nothing else", () => {
  assert.deepEqual(declared().values, Object.keys(uploader).sort());
});

test("each class's members are declared, and nothing else", () => {
  const { classes } = declared();
  const file = new File(["a\n1\n"], "a.csv");
  const storage = { getItem: () => null, setItem() {}, removeItem() {} };
  const instances = {
    UploadError: [new uploader.UploadError("x"), new Error("x")],
    NetworkError: [new uploader.NetworkError(), new Error("x")],
    UploadMemory: [new uploader.UploadMemory(storage, "user"), {}],
    Uploader: [new uploader.Uploader(file, 1), new EventTarget()],
  };
  assert.deepEqual(Object.keys(classes).sort(), Object.keys(instances).sort());
  for (const [name, [instance, base]] of Object.entries(instances)) {
    // The declarations type EventTarget's listener methods for the uploader's events.
    const typedOnly = name === "Uploader" ? ["addEventListener", "removeEventListener"] : [];
    const mine = classes[name].filter((m) => !typedOnly.includes(m));
    assert.deepEqual(mine, membersOf(uploader[name], instance, base), name);
  }
});
