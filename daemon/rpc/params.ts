// A small checker for RPC params: each method declares its fields once (protocol/api.ts), and
// anything else, a missing field or a wrong type (a list's items too) is BAD_PARAMS naming the
// field, before a handler runs.

import { BAD_PARAMS } from '../../protocol/errors.js'
import type { FieldSpec, ParamSpec } from '../../protocol/api.js'

export type { FieldSpec, FieldType, ParamSpec } from '../../protocol/api.js'

export function checkParams (spec: ParamSpec, params: unknown): Record<string, unknown> {
  if (params === undefined || params === null) params = {}
  if (typeof params !== 'object' || Array.isArray(params)) throw BAD_PARAMS('params must be an object')
  const p = params as Record<string, unknown>
  for (const key of Object.keys(p)) {
    if (!Object.hasOwn(spec, key)) throw BAD_PARAMS(`unknown parameter "${key}"`)
  }
  for (const [key, field] of Object.entries(spec)) {
    const v = p[key]
    if (v === undefined) {
      if (!field.optional) throw BAD_PARAMS(`missing parameter "${key}"`)
      continue
    }
    if (field.array) {
      if (!Array.isArray(v)) throw BAD_PARAMS(`"${key}" must be a list`)
      v.forEach((x, i) => checkValue(`${key}[${i}]`, field, x))
    } else {
      checkValue(key, field, v)
    }
  }
  return p
}

function checkValue (key: string, field: FieldSpec, v: unknown): void {
  if (Array.isArray(field.type)) {
    if (!field.type.includes(v as string)) throw BAD_PARAMS(`"${key}" must be one of ${field.type.join(', ')}`)
  } else if (field.type === 'object') {
    if (typeof v !== 'object' || v === null || Array.isArray(v)) throw BAD_PARAMS(`"${key}" must be an object`)
  } else if (kindOf(v) !== field.type || (field.type === 'string' && v === '') || (field.type === 'number' && !Number.isFinite(v))) {
    throw BAD_PARAMS(`"${key}" must be a ${field.type === 'string' ? 'non-empty string' : field.type}`)
  }
}

function kindOf (v: unknown): string {
  return typeof v
}
