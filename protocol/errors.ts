// One error class for daemon, client and peers. Each code has a stable name, a JSON-RPC error
// number and a CLI exit code; the server puts the code in `error.data.code`, the client turns it
// back into an OsfarmError.

export interface ErrorSpec {
  rpc: number
  exit: number
  text: string
}

// Codes are only ever appended. JSON-RPC numbers -32000..-32099 are the server's own range.
export const ERRORS = {
  INTERNAL: { rpc: -32603, exit: 70, text: 'internal error' },
  BAD_REQUEST: { rpc: -32600, exit: 64, text: 'bad request' },
  BAD_PARAMS: { rpc: -32602, exit: 64, text: 'bad parameters' },
  UNKNOWN_METHOD: { rpc: -32601, exit: 64, text: 'unknown method' },
  FRAME_TOO_LARGE: { rpc: -32001, exit: 64, text: 'frame too large' },
  PERMISSION_DENIED: { rpc: -32002, exit: 77, text: 'permission denied' },
  DAEMON_UNREACHABLE: { rpc: -32003, exit: 69, text: 'daemon unreachable' },
  DAEMON_ALREADY_RUNNING: { rpc: -32004, exit: 75, text: 'another osfarmd uses this data directory' },
  BAD_CONFIG: { rpc: -32005, exit: 78, text: 'bad configuration' },
  NOT_FOUND: { rpc: -32010, exit: 66, text: 'not found' },
  IMAGE_NOT_FOUND: { rpc: -32011, exit: 66, text: 'image not found' },
  JOB_NOT_FOUND: { rpc: -32012, exit: 66, text: 'job not found' },
  AMBIGUOUS_ID: { rpc: -32013, exit: 64, text: 'id prefix matches more than one object' },
  NAME_IN_USE: { rpc: -32014, exit: 73, text: 'name already in use' },
  SOURCE_INVALID: { rpc: -32020, exit: 66, text: 'source is not a usable image file' },
  SOURCE_EMPTY: { rpc: -32021, exit: 65, text: 'source is empty' },
  TARGET_UNWRITABLE: { rpc: -32022, exit: 73, text: 'cannot write target' },
  IO_ERROR: { rpc: -32023, exit: 74, text: 'I/O error' },
  VERIFY_FAILED: { rpc: -32024, exit: 65, text: 'content does not match its manifest' },
  JOB_CANCELLED: { rpc: -32030, exit: 130, text: 'job cancelled' },
  JOB_FAILED: { rpc: -32031, exit: 70, text: 'job failed' },
  BACKEND_UNAVAILABLE: { rpc: -32040, exit: 69, text: 'store backend unavailable on this host' },
  VOLUME_EXISTS: { rpc: -32041, exit: 73, text: 'volume already exists' },
  VOLUME_NOT_FOUND: { rpc: -32042, exit: 66, text: 'volume not found' },
  VOLUME_BUSY: { rpc: -32043, exit: 75, text: 'volume is in use' },
  VOLUME_READ_ONLY: { rpc: -32044, exit: 73, text: 'volume is committed and read-only' },
  STORE_FULL: { rpc: -32045, exit: 73, text: 'store is full' },
  TOOL_MISSING: { rpc: -32050, exit: 69, text: 'a required system tool is missing' },
  TOOL_FAILED: { rpc: -32051, exit: 70, text: 'a system tool failed' },
  PROTOCOL_ERROR: { rpc: -32060, exit: 76, text: 'peer protocol violation' },
  FLEET_NOT_CONFIGURED: { rpc: -32061, exit: 78, text: 'no fleet configured (osfarmctl fleet init)' },
  NO_PEERS: { rpc: -32062, exit: 69, text: 'no peer holds the image' },
  BAD_BLOCK: { rpc: -32063, exit: 76, text: 'a peer sent a block that does not match its hash' },
  PEER_GONE: { rpc: -32064, exit: 69, text: 'peer disconnected' },
  SPEC_INVALID: { rpc: -32070, exit: 65, text: 'image spec is invalid' },
  BUILD_FAILED: { rpc: -32071, exit: 70, text: 'image build failed' },
  MIRROR_UNREACHABLE: { rpc: -32072, exit: 69, text: 'package mirror unreachable' },
  PACKAGE_NOT_FOUND: { rpc: -32073, exit: 65, text: 'package not found in the repositories' },
  SCRIPT_FAILED: { rpc: -32074, exit: 65, text: 'a build script exited non-zero' },
  SIZE_TOO_SMALL: { rpc: -32075, exit: 73, text: 'image size too small for its content' },
  SOURCE_CHANGED: { rpc: -32025, exit: 74, text: 'source changed while it was read' },
  NO_SPACE: { rpc: -32026, exit: 73, text: 'no space left on the target\'s filesystem' },
  DAEMON_BUSY: { rpc: -32006, exit: 75, text: 'daemon has too many connections; try again' },
  SNAPSHOT_UNAVAILABLE: { rpc: -32076, exit: 66, text: 'the pinned repository state is not available on this host' },
} as const satisfies Record<string, ErrorSpec>

export type ErrorCode = keyof typeof ERRORS

export function isErrorCode (code: unknown): code is ErrorCode {
  return typeof code === 'string' && Object.hasOwn(ERRORS, code)
}

export class OsfarmError extends Error {
  readonly code: ErrorCode
  readonly details: Record<string, unknown> | undefined

  constructor (code: ErrorCode, message?: string, details?: Record<string, unknown>, options?: ErrorOptions) {
    super(`${code}: ${message ?? ERRORS[code].text}`, options)
    this.name = 'OsfarmError'
    this.code = code
    this.details = details
  }

  get rpcCode (): number { return ERRORS[this.code].rpc }
  get exitCode (): number { return ERRORS[this.code].exit }

  // The message without its "CODE: " prefix, for the wire (the code travels separately).
  get text (): string { return this.message.slice(this.code.length + 2) }

  static from (err: unknown): OsfarmError {
    if (err instanceof OsfarmError) return err
    const message = err instanceof Error ? err.message : String(err)
    return new OsfarmError('INTERNAL', message, undefined, { cause: err })
  }
}

// Named factories, so call sites read as what went wrong.
const factory = (code: ErrorCode) => (message?: string, details?: Record<string, unknown>) => new OsfarmError(code, message, details)

export const BAD_PARAMS = factory('BAD_PARAMS')
export const BAD_CONFIG = factory('BAD_CONFIG')
export const NOT_FOUND = factory('NOT_FOUND')
export const IMAGE_NOT_FOUND = factory('IMAGE_NOT_FOUND')
export const JOB_NOT_FOUND = factory('JOB_NOT_FOUND')
export const AMBIGUOUS_ID = factory('AMBIGUOUS_ID')
export const NAME_IN_USE = factory('NAME_IN_USE')
export const SOURCE_INVALID = factory('SOURCE_INVALID')
export const SOURCE_EMPTY = factory('SOURCE_EMPTY')
export const TARGET_UNWRITABLE = factory('TARGET_UNWRITABLE')
export const IO_ERROR = factory('IO_ERROR')
export const VERIFY_FAILED = factory('VERIFY_FAILED')
export const JOB_CANCELLED = factory('JOB_CANCELLED')
export const DAEMON_ALREADY_RUNNING = factory('DAEMON_ALREADY_RUNNING')
export const DAEMON_UNREACHABLE = factory('DAEMON_UNREACHABLE')
export const PERMISSION_DENIED = factory('PERMISSION_DENIED')
export const BACKEND_UNAVAILABLE = factory('BACKEND_UNAVAILABLE')
export const VOLUME_EXISTS = factory('VOLUME_EXISTS')
export const VOLUME_NOT_FOUND = factory('VOLUME_NOT_FOUND')
export const VOLUME_BUSY = factory('VOLUME_BUSY')
export const VOLUME_READ_ONLY = factory('VOLUME_READ_ONLY')
export const STORE_FULL = factory('STORE_FULL')
export const TOOL_MISSING = factory('TOOL_MISSING')
export const TOOL_FAILED = factory('TOOL_FAILED')
export const PROTOCOL_ERROR = factory('PROTOCOL_ERROR')
export const FRAME_TOO_LARGE = factory('FRAME_TOO_LARGE')
export const FLEET_NOT_CONFIGURED = factory('FLEET_NOT_CONFIGURED')
export const NO_PEERS = factory('NO_PEERS')
export const BAD_BLOCK = factory('BAD_BLOCK')
export const PEER_GONE = factory('PEER_GONE')
export const SPEC_INVALID = factory('SPEC_INVALID')
export const BUILD_FAILED = factory('BUILD_FAILED')
export const MIRROR_UNREACHABLE = factory('MIRROR_UNREACHABLE')
export const PACKAGE_NOT_FOUND = factory('PACKAGE_NOT_FOUND')
export const SCRIPT_FAILED = factory('SCRIPT_FAILED')
export const SIZE_TOO_SMALL = factory('SIZE_TOO_SMALL')
export const SOURCE_CHANGED = factory('SOURCE_CHANGED')
export const NO_SPACE = factory('NO_SPACE')
export const DAEMON_BUSY = factory('DAEMON_BUSY')
export const SNAPSHOT_UNAVAILABLE = factory('SNAPSHOT_UNAVAILABLE')
