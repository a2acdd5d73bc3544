// Real pino and bunyan output for logagg's tests.
const pino = require('pino');
const bunyan = require('bunyan');
const fs = require('fs');

// pino, default time (epoch ms): 20 warnings in a tight loop (same millisecond or close),
// plus lines carrying application fields named event_id and source.
{
  const out = fs.openSync('pino-repeats.jsonl', 'w');
  const log = pino({ name: 'checkout' }, pino.destination({ dest: out, sync: true }));
  log.info({ port: 3000 }, 'server listening');
  for (let i = 0; i < 20; i++) log.warn('retrying connection');
  log.info({ event_id: 'evt-1', source: 'billing-ui' }, 'order placed');
  log.info({ event_id: 'evt-1', source: 'billing-ui' }, 'order placed again');
  log.info({ event_id: { nested: true } }, 'object event_id');
  log.error({ amount: 12345678901234567890.55 }, 'float amount');
}
// pino with stdTimeFunctions.unixTime: epoch seconds
{
  const out = fs.openSync('pino-unixtime.jsonl', 'w');
  const log = pino({ name: 'cron', timestamp: pino.stdTimeFunctions.unixTime },
                   pino.destination({ dest: out, sync: true }));
  log.info('job started');
  log.info('job finished');
}
// bunyan: 10 identical lines
{
  const log = bunyan.createLogger({ name: 'worker', streams: [{ path: 'bunyan-repeats.jsonl' }] });
  for (let i = 0; i < 10; i++) log.info('tick');
  log.info({ event_id: 'evt-7', source: 'cron' }, 'app fields');
}
