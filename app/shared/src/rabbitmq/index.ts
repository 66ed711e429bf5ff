import amqp, { ConfirmChannel, ConsumeMessage } from 'amqplib';

import { intSetting } from '../utils/env';
import { errorText, log } from '../utils/log';
import { withTimeout } from '../utils/time';

/** The topic exchange every domain event goes through. */
export const EVENTS_EXCHANGE = 'psa.events';

type ChannelModel = Awaited<ReturnType<typeof amqp.connect>>;
type Setup = (channel: ConfirmChannel) => Promise<void>;

export class BrokerUnavailable extends Error {}

export type EventHandler = (payload: unknown, message: ConsumeMessage) => Promise<void>;

/**
 * One RabbitMQ connection and confirm channel per process, reconnecting with
 * backoff. Consumers are declared as setups that run again on every
 * reconnect, so queues, bindings and consumers come back with the channel.
 */
class Broker {
  private model?: ChannelModel;
  private channel?: ConfirmChannel;
  private connecting?: Promise<void>;
  private retry?: NodeJS.Timeout;
  private attempt = 0;
  private lastError?: string;
  private lastLogged = 0;
  private closing = false;
  private readonly setups: Setup[] = [];
  private readonly consumerTags = new Set<string>();
  private readonly handling = new Set<Promise<void>>();

  /** Connect in the background if not connected or connecting already. */
  start(): void {
    if (this.closing || this.channel || this.connecting) {
      return;
    }
    this.connecting = this.connect().finally(() => {
      this.connecting = undefined;
    });
  }

  private async connect(): Promise<void> {
    const url = process.env.RABBITMQ_URL || 'amqp://127.0.0.1:5672';
    let model: ChannelModel | undefined;
    try {
      // amqplib's timeout covers the TCP connect and the AMQP handshake.
      model = await amqp.connect(url, { timeout: intSetting('RABBITMQ_CONNECT_TIMEOUT_MS', 2000) });
      model.on('error', (err) => this.failed(err));
      model.on('close', () => this.lost(model));
      const channel = await model.createConfirmChannel();
      channel.on('error', (err) => this.failed(err));
      // A channel closed by the broker (e.g. a failed declaration) takes the
      // connection with it, and the reconnect builds both again.
      channel.on('close', () => {
        if (!this.closing) {
          model?.close().catch(() => undefined);
        }
      });
      await channel.assertExchange(EVENTS_EXCHANGE, 'topic', { durable: true });
      for (const setup of this.setups) {
        await setup(channel);
      }
      if (this.closing) {
        await model.close().catch(() => undefined);
        return;
      }
      this.model = model;
      this.channel = channel;
      this.attempt = 0;
      this.lastError = undefined;
      log.info('rabbitmq channel open');
    } catch (err) {
      this.failed(err);
      model?.close().catch(() => undefined);
      this.scheduleReconnect();
    }
  }

  private failed(err: unknown): void {
    this.lastError = errorText(err);
    if (Date.now() - this.lastLogged > 30000) {
      this.lastLogged = Date.now();
      log.warn('rabbitmq error', { error: this.lastError });
    }
  }

  private lost(model: ChannelModel | undefined): void {
    if (model !== this.model) {
      return;
    }
    this.model = undefined;
    this.channel = undefined;
    this.consumerTags.clear();
    if (!this.closing) {
      log.warn('rabbitmq connection closed; reconnecting', { error: this.lastError });
      this.scheduleReconnect();
    }
  }

  private scheduleReconnect(): void {
    if (this.closing || this.retry) {
      return;
    }
    const delay = Math.min(500 * 2 ** this.attempt, 10000);
    this.attempt += 1;
    this.retry = setTimeout(() => {
      this.retry = undefined;
      this.start();
    }, delay);
    this.retry.unref();
  }

  /** Publish an event and wait for the broker's confirm. */
  async publish(routingKey: string, payload: unknown, messageId: string): Promise<void> {
    const channel = this.channel;
    if (!channel) {
      throw new BrokerUnavailable(`RabbitMQ not connected${this.lastError ? `: ${this.lastError}` : ''}`);
    }
    const body = Buffer.from(JSON.stringify(payload));
    const confirmed = new Promise<void>((resolve, reject) => {
      channel.publish(
        EVENTS_EXCHANGE,
        routingKey,
        body,
        { persistent: true, contentType: 'application/json', messageId, timestamp: Math.floor(Date.now() / 1000) },
        (err) => (err ? reject(err) : resolve()),
      );
    });
    await withTimeout(confirmed, intSetting('RABBITMQ_CONFIRM_TIMEOUT_MS', 5000), 'RabbitMQ publish confirm');
  }

  /**
   * Consume events with the given routing keys from a durable queue. A
   * handler that throws has its message requeued after a pause.
   */
  consume(queue: string, routingKeys: string[], handler: EventHandler, prefetch = 10): void {
    const setup: Setup = async (channel) => {
      await channel.assertQueue(queue, { durable: true });
      for (const key of routingKeys) {
        await channel.bindQueue(queue, EVENTS_EXCHANGE, key);
      }
      await channel.prefetch(prefetch);
      const { consumerTag } = await channel.consume(queue, (message) => {
        if (message) {
          const work = this.handle(channel, message, handler);
          this.handling.add(work);
          void work.finally(() => this.handling.delete(work));
        }
      });
      this.consumerTags.add(consumerTag);
    };
    this.setups.push(setup);
    if (this.channel) {
      setup(this.channel).catch((err) => this.failed(err));
    }
    this.start();
  }

  private async handle(channel: ConfirmChannel, message: ConsumeMessage, handler: EventHandler): Promise<void> {
    try {
      const payload: unknown = JSON.parse(message.content.toString('utf8'));
      await handler(payload, message);
      channel.ack(message);
    } catch (err) {
      log.warn('event handling failed; requeueing', {
        routingKey: message.fields.routingKey,
        messageId: message.properties.messageId,
        error: errorText(err),
      });
      // Without the pause a failing dependency turns into a hot loop.
      setTimeout(() => {
        try {
          channel.nack(message, false, !(err instanceof SyntaxError));
        } catch {
          // The channel closed meanwhile; the broker redelivers anyway.
        }
      }, 1000).unref();
    }
  }

  /** Round trip for health: the channel is open and the exchange exists. */
  async check(): Promise<void> {
    this.start();
    const channel = this.channel;
    if (!channel) {
      throw new Error(`channel not open${this.lastError ? `: ${this.lastError}` : ''}`);
    }
    await channel.checkExchange(EVENTS_EXCHANGE);
  }

  /** Stop consuming, let handlers finish, and close the connection. */
  async close(): Promise<void> {
    this.closing = true;
    clearTimeout(this.retry);
    const channel = this.channel;
    if (channel) {
      for (const tag of this.consumerTags) {
        await channel.cancel(tag).catch(() => undefined);
      }
    }
    await Promise.allSettled([...this.handling]);
    await this.connecting?.catch(() => undefined);
    const model = this.model;
    this.model = undefined;
    this.channel = undefined;
    await model?.close().catch(() => undefined);
  }
}

export const broker = new Broker();
export const checkRabbitMQ = (): Promise<void> => broker.check();
export const closeRabbitMQ = (): Promise<void> => broker.close();
