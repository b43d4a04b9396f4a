/**
 * Beetle's return codes (Ruby `Beetle::RC`), one per way a delivery can end. `reject` means the delivery
 * goes back to the broker (requeued or dead-lettered); `failure` means the handler's failure hook fires.
 */
export const Outcome = {
  OK: 'OK',
  Ancient: 'Ancient',
  AttemptsLimitReached: 'AttemptsLimitReached',
  ExceptionsLimitReached: 'ExceptionsLimitReached',
  ExceptionNotAccepted: 'ExceptionNotAccepted',
  Delayed: 'Delayed',
  HandlerCrash: 'HandlerCrash',
  HandlerNotYetTimedOut: 'HandlerNotYetTimedOut',
  MutexLocked: 'MutexLocked',
  InternalError: 'InternalError',
  DecodingError: 'DecodingError',
  PreprocessingError: 'PreprocessingError',
} as const;

export type Outcome = (typeof Outcome)[keyof typeof Outcome];

interface OutcomeFlags {
  readonly reject: boolean;
  readonly failure: boolean;
}

const flags: Readonly<Record<Outcome, OutcomeFlags>> = {
  OK: { reject: false, failure: false },
  Ancient: { reject: false, failure: false },
  AttemptsLimitReached: { reject: false, failure: true },
  ExceptionsLimitReached: { reject: false, failure: true },
  ExceptionNotAccepted: { reject: false, failure: true },
  Delayed: { reject: true, failure: false },
  HandlerCrash: { reject: true, failure: false },
  HandlerNotYetTimedOut: { reject: true, failure: false },
  MutexLocked: { reject: true, failure: false },
  InternalError: { reject: true, failure: false },
  DecodingError: { reject: false, failure: true },
  PreprocessingError: { reject: false, failure: true },
};

export const allOutcomes: readonly Outcome[] = Object.values(Outcome);

/** The delivery is handed back to the broker (requeue, or dead letter queue) instead of acked. */
export const isRejectOutcome = (outcome: Outcome): boolean => flags[outcome].reject;

/** The message has finally failed: the handler's `failure` hook (or `failback`) fires. */
export const isFailureOutcome = (outcome: Outcome): boolean => flags[outcome].failure;
