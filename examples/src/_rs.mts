import { main } from '/work/main/examples/src/consume-many-messages-and-shutdown-randomly.ts';
const s = await main({ count: 300, workers: 3, chaosMs: 6000 });
console.log(JSON.stringify(s, null, 1));
const t = Date.now();
process.on('exit', () => console.log('exit after', Date.now() - t));
setTimeout(() => console.log(process.getActiveResourcesInfo()), 500).unref();
