import type { CopyObservation, DeliveryObservation, PublishObservation, Telemetry } from '@beetle/core';

const present = <T>(items: readonly (T | undefined)[]): T[] => items.filter((i): i is T => i !== undefined);

/**
 * Several telemetries as one (e.g. tracing and metrics): each observes every publish and delivery. The
 * headers of all publish observations are merged; the handler runs inside every delivery observation, the
 * first given outermost.
 */
export function combineTelemetry(...telemetries: readonly Telemetry[]): Telemetry {
  return {
    publish(info) {
      const all = present(telemetries.map((t) => t.publish?.(info)));
      if (all.length === 0) return undefined;
      if (all.length === 1) return all[0];
      const headers = Object.assign({}, ...all.map((o) => o.headers ?? {})) as Record<string, string>;
      const combined: PublishObservation = {
        headers,
        copy(server) {
          const copies = present(all.map((o) => o.copy(server)));
          const copy: CopyObservation = { end: (error) => copies.forEach((c) => c.end(error)) };
          return copy;
        },
        end: (result) => all.forEach((o) => o.end(result)),
      };
      return combined;
    },
    delivery(info) {
      const all = present(telemetries.map((t) => t.delivery?.(info)));
      if (all.length === 0) return undefined;
      if (all.length === 1) return all[0];
      const combined: DeliveryObservation = {
        run: <T>(fn: () => T): T => all.reduceRight<() => T>((inner, o) => () => o.run(inner), fn)(),
        step: (name, ms, error) => all.forEach((o) => o.step(name, ms, error)),
        handled: (ms, error) => all.forEach((o) => o.handled(ms, error)),
        end: (result) => all.forEach((o) => o.end(result)),
      };
      return combined;
    },
  };
}
