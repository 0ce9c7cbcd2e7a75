// The base of the errors hostile input can make prism build once per message, frame, packet or
// URB (codec decode errors, SCSI sense, BOT CBW errors): built without a stack trace. Capturing
// one was most of the cost of rejecting a bad frame, and it would only ever point into the
// decoder; the message says what was wrong and where.
export abstract class StacklessError extends Error {
  constructor(message: string, options?: ErrorOptions) {
    const limit = Error.stackTraceLimit;
    Error.stackTraceLimit = 0;
    try {
      super(message, options);
    } finally {
      Error.stackTraceLimit = limit;
    }
  }
}
