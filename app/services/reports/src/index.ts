import path from 'node:path';

import { Router, broker, getRedis, runService } from '@psa/shared';

const NAME = 'reports';
const COUNT_KEY = 'psa:tickets:created';
const QUEUE = 'reports.ticket-created';

// Delivery is at least once (the tickets outbox can publish an event twice,
// a redelivery after a lost ack too), so the count goes up only the first time
// an event id is seen. Seen ids expire after a week.
const COUNT_ONCE = `
if redis.call('SET', KEYS[2], '1', 'NX', 'EX', ARGV[1]) then
  return redis.call('INCR', KEYS[1])
end
return tonumber(redis.call('GET', KEYS[1]) or '0')
`;
const SEEN_TTL_S = 7 * 24 * 3600;

const router = new Router()
  .get('/api/v1/reports', () => ({ service: NAME, reports: ['tickets-created'] }))
  .get('/api/v1/reports/tickets-created', async () => {
    const value = await getRedis().get(COUNT_KEY);
    return { service: NAME, report: 'tickets-created', key: COUNT_KEY, count: Number(value ?? 0) };
  });

runService({
  name: NAME,
  defaultPort: 3070,
  serviceDir: path.resolve(__dirname, '..'),
  router,
  dependencies: ['redis', 'rabbitmq'],
  start: () => {
    getRedis();
    broker.consume(QUEUE, ['ticket.created'], async (payload, message) => {
      const ticket = (payload as { ticket_id?: unknown } | null)?.ticket_id;
      const id = ticket !== undefined ? `ticket:${ticket}` : `message:${message.properties.messageId}`;
      await getRedis().eval(COUNT_ONCE, 2, COUNT_KEY, `psa:tickets:created:seen:${id}`, SEEN_TTL_S);
    });
  },
});
