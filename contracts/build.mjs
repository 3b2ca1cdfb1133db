// Compiles contracts/src/*.sol with solc from npm (solcjs, standard JSON) against @openzeppelin/contracts from
// node_modules, and writes contracts/artifacts/<Name>.json (ABI, creation and runtime bytecode, compiler).
//   node contracts/build.mjs [OUT_DIR]      (default: contracts/artifacts)
// The output is deterministic: tests/chain/test_artifacts.py rebuilds into a temporary folder and compares.
import fs from "node:fs";
import path from "node:path";
import { createRequire } from "node:module";
import { fileURLToPath } from "node:url";

const require = createRequire(import.meta.url);
const solc = require("solc");

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.dirname(here);
const srcDir = path.join(here, "src");
const outDir = path.resolve(process.argv[2] || path.join(here, "artifacts"));

const sources = {};
for (const name of fs.readdirSync(srcDir).filter((f) => f.endsWith(".sol")).sort()) {
  sources[`src/${name}`] = { content: fs.readFileSync(path.join(srcDir, name), "utf8") };
}

const input = {
  language: "Solidity",
  sources,
  settings: {
    optimizer: { enabled: true, runs: 200 },
    evmVersion: "cancun",
    outputSelection: { "*": { "*": ["abi", "evm.bytecode.object", "evm.deployedBytecode.object"] } },
  },
};

function findImports(importPath) {
  // Only the npm packages pinned in package.json may be imported (no remote imports).
  const file = path.join(root, "node_modules", importPath);
  if (!importPath.startsWith("@openzeppelin/") || !fs.existsSync(file)) return { error: `not found: ${importPath}` };
  return { contents: fs.readFileSync(file, "utf8") };
}

const output = JSON.parse(solc.compile(JSON.stringify(input), { import: findImports }));
if (!output.contracts && !output.errors) {
  process.stderr.write(`solc returned no contracts: ${JSON.stringify(output).slice(0, 2000)}\n`);
  process.exit(1);
}
const errors = (output.errors || []).filter((e) => e.severity === "error");
for (const e of output.errors || []) process.stderr.write(e.formattedMessage + "\n");
if (errors.length) process.exit(1);

fs.mkdirSync(outDir, { recursive: true });
for (const [file, contracts] of Object.entries(output.contracts).filter(([f]) => f.startsWith("src/"))) {
  for (const [name, c] of Object.entries(contracts)) {
    if (!c.evm.bytecode.object) continue; // interfaces and abstract contracts
    const artifact = {
      contractName: name,
      sourceName: file,
      compiler: `solc ${solc.version()}`,
      settings: { optimizer: input.settings.optimizer, evmVersion: input.settings.evmVersion },
      abi: c.abi,
      bytecode: "0x" + c.evm.bytecode.object,
      deployedBytecode: "0x" + c.evm.deployedBytecode.object,
    };
    fs.writeFileSync(path.join(outDir, `${name}.json`), JSON.stringify(artifact, null, 2) + "\n");
    process.stdout.write(`${name}: ${c.evm.bytecode.object.length / 2} bytes\n`);
  }
}
