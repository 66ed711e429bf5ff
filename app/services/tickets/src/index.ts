import { randomUUID } from 'node:crypto';
import path from 'node:path';

import {
  HttpError, Router, broker, ensureSchema, errorText, getPool, intSetting, log, readJson,
  runService, sendJson, transaction,
} from '@psa/shared';

const NAME = 'tickets';
const PRIORITIES = ['low', 'normal', 'high', 'urgent'];

// Tickets and the events about them are written in one transaction to an
// outbox; a relay publishes the outbox to RabbitMQ. A ticket is thus never
// stored without its event, and RabbitMQ being down delays events only.
const SCHEMA = [
  `CREATE TABLE IF NOT EXISTS tickets (
     id bigserial PRIMARY KEY,
     title text NOT NULL CHECK (length(title) BETWEEN 1 AND 200),
     description text NOT NULL DEFAULT '',
     priority text NOT NULL DEFAULT 'normal'
       CHECK (priority IN ('low', 'normal', 'high', 'urgent')),
     status text NOT NULL DEFAULT 'open',
     customer_id bigint,
     created_at timestamptz NOT NULL DEFAULT now()
   )`,
  `CREATE TABLE IF NOT EXISTS ticket_outbox (
     id bigserial PRIMARY KEY,
     event_id uuid NOT NULL UNIQUE,
     routing_key text NOT NULL,
     payload jsonb NOT NULL,
     created_at timestamptz NOT NULL DEFAULT now(),
     published_at timestamptz
   )`,
  `CREATE INDEX IF NOT EXISTS ticket_outbox_pending
     ON ticket_outbox (id) WHERE published_at IS NULL`,
];

let schema: Promise<void> | undefined;

function schemaReady(): Promise<void> {
  if (!schema) {
    schema = ensureSchema('psa:tickets:schema', SCHEMA);
    schema.catch(() => {
      schema = undefined;
    });
  }
  return schema;
}

interface NewTicket {
  title: string;
  description: string;
  priority: string;
  customer_id: number | null;
}

function validate(body: unknown): NewTicket {
  const b = (body ?? {}) as Record<string, unknown>;
  const fail = (message: string): never => {
    throw new HttpError(400, 'invalid_ticket', message);
  };
  const title = typeof b.title === 'string' ? b.title.trim() : '';
  if (title === '' || title.length > 200) {
    fail('title must be a string of 1 to 200 characters');
  }
  if (b.description !== undefined && (typeof b.description !== 'string' || b.description.length > 10000)) {
    fail('description must be a string of at most 10000 characters');
  }
  if (b.priority !== undefined && !PRIORITIES.includes(b.priority as string)) {
    fail(`priority must be one of ${PRIORITIES.join(', ')}`);
  }
  const customer = b.customer_id;
  if (customer !== undefined && customer !== null && !(Number.isSafeInteger(customer) && (customer as number) > 0)) {
    fail('customer_id must be a positive integer');
  }
  return {
    title,
    description: (b.description as string | undefined) ?? '',
    priority: (b.priority as string | undefined) ?? 'normal',
    customer_id: (customer as number | null | undefined) ?? null,
  };
}

const TICKET_COLUMNS = 'id, title, description, priority, status, customer_id, created_at';

// The relay: publish pending outbox rows in order, mark them published.
// FOR UPDATE SKIP LOCKED lets every instance relay without sending a row twice
// (a crash between publish and commit can still send one again: consumers
// must be idempotent, as with any at-least-once delivery).
let relaying: Promise<void> | undefined;
let relayAgain = false;

async function relayBatch(): Promise<boolean> {
  return transaction(async (client) => {
    const { rows } = await client.query<{ id: string; event_id: string; routing_key: string; payload: unknown }>(
      `SELECT id, event_id, routing_key, payload FROM ticket_outbox
        WHERE published_at IS NULL ORDER BY id LIMIT 100 FOR UPDATE SKIP LOCKED`,
    );
    const published: string[] = [];
    for (const row of rows) {
      try {
        await broker.publish(row.routing_key, row.payload, row.event_id);
      } catch (err) {
        log.debug('outbox relay paused', { error: errorText(err) });
        break;
      }
      published.push(row.id);
    }
    if (published.length > 0) {
      await client.query('UPDATE ticket_outbox SET published_at = now() WHERE id = ANY($1::bigint[])', [published]);
    }
    return rows.length === 100 && published.length === rows.length;
  });
}

function relay(): Promise<void> {
  if (relaying) {
    relayAgain = true;
    return relaying;
  }
  relaying = (async () => {
    do {
      relayAgain = false;
      while (await relayBatch()) {
        // A full batch went out: there may be more.
      }
    } while (relayAgain);
  })()
    .catch((err) => log.warn('outbox relay failed', { error: errorText(err) }))
    .finally(() => {
      relaying = undefined;
    });
  return relaying;
}

const router = new Router()
  .post('/api/v1/tickets', async ({ req, res }) => {
    const ticket = validate(await readJson(req));
    await schemaReady();
    const stored = await transaction(async (client) => {
      const { rows } = await client.query(
        `INSERT INTO tickets (title, description, priority, customer_id)
         VALUES ($1, $2, $3, $4) RETURNING ${TICKET_COLUMNS}`,
        [ticket.title, ticket.description, ticket.priority, ticket.customer_id],
      );
      const row = rows[0];
      const event = {
        type: 'ticket.created',
        ticket_id: String(row.id),
        priority: row.priority,
        customer_id: row.customer_id,
        created_at: row.created_at,
      };
      await client.query(
        'INSERT INTO ticket_outbox (event_id, routing_key, payload) VALUES ($1, $2, $3)',
        [randomUUID(), 'ticket.created', JSON.stringify(event)],
      );
      return row;
    });
    void relay();
    res.setHeader('location', `/api/v1/tickets/${stored.id}`);
    sendJson(res, 201, { service: NAME, ticket: stored });
  })
  .get('/api/v1/tickets', async ({ url }) => {
    await schemaReady();
    const limit = Math.min(Math.max(Number(url.searchParams.get('limit')) || 50, 1), 500);
    const { rows } = await getPool().query(
      `SELECT ${TICKET_COLUMNS} FROM tickets ORDER BY id DESC LIMIT $1`,
      [limit],
    );
    return { service: NAME, tickets: rows };
  })
  .get('/api/v1/tickets/:id', async ({ params }) => {
    if (!/^[1-9][0-9]{0,17}$/.test(params.id)) {
      throw new HttpError(400, 'invalid_id', 'a ticket id is a positive integer');
    }
    await schemaReady();
    const { rows } = await getPool().query(`SELECT ${TICKET_COLUMNS} FROM tickets WHERE id = $1`, [params.id]);
    if (rows.length === 0) {
      throw new HttpError(404, 'ticket_not_found', `no ticket ${params.id}`);
    }
    return { service: NAME, ticket: rows[0] };
  });

let relayTimer: NodeJS.Timeout | undefined;

runService({
  name: NAME,
  defaultPort: 3030,
  serviceDir: path.resolve(__dirname, '..'),
  router,
  dependencies: ['postgres', 'rabbitmq'],
  start: () => {
    broker.start();
    schemaReady()
      .then(() => relay())
      .catch((err) => log.warn('schema not ready yet', { error: errorText(err) }));
    relayTimer = setInterval(() => {
      schemaReady().then(() => relay()).catch(() => undefined);
    }, intSetting('OUTBOX_RELAY_INTERVAL_MS', 5000));
    relayTimer.unref();
  },
  stop: async () => {
    clearInterval(relayTimer);
    await relaying;
  },
});
