// Runs an external tool with execa and turns its failures into OsfarmErrors: a missing binary is
// TOOL_MISSING (with the package to install), a non-zero exit is TOOL_FAILED with its stderr,
// and a cancelled run is JOB_CANCELLED. Each tool wrapper calls this once.

import { execa, type Options } from 'execa'
import { JOB_CANCELLED, TOOL_FAILED, TOOL_MISSING } from '../../protocol/errors.js'

export interface ToolOptions {
  signal?: AbortSignal
  env?: Record<string, string>
  input?: string
  timeoutMs?: number
  // The Debian package that provides the tool, for the error message.
  pkg?: string
}

export async function runTool (cmd: string, args: string[], options: ToolOptions = {}): Promise<{ stdout: string, stderr: string }> {
  const execaOptions: Options = { reject: false, cancelSignal: options.signal, env: options.env, input: options.input, timeout: options.timeoutMs }
  const result = await execa(cmd, args, execaOptions)
  const stdout = String(result.stdout ?? '')
  const stderr = String(result.stderr ?? '')
  if (!result.failed) return { stdout, stderr }
  if (result.isCanceled || options.signal?.aborted) throw JOB_CANCELLED(`${cmd} cancelled`)
  if ((result as { code?: string }).code === 'ENOENT') {
    throw TOOL_MISSING(`${cmd} is not installed${options.pkg ? ` (apt-get install ${options.pkg})` : ''}`)
  }
  if (result.timedOut) throw TOOL_FAILED(`${cmd} timed out after ${options.timeoutMs} ms`)
  const why = stderr.trim().split('\n').slice(-5).join('\n') || result.shortMessage
  throw TOOL_FAILED(`${cmd} ${args[0] ?? ''} failed (exit ${result.exitCode ?? result.signal}): ${why}`, { tool: cmd, exitCode: result.exitCode, stderr: stderr.slice(-4000) })
}
