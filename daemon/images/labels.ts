// Image labels: "key=value" strings that seed policies select images by. They are metadata,
// carried in an image's signed advert; never part of its content or of a build's key.

import { BAD_PARAMS } from '../../protocol/errors.js'
import { MAX_LABELS } from '../../protocol/wire.js'

// Key and value together fit the advert's 255 bytes a label; values hold no commas (the local
// API joins labels with them).
const LABEL = /^[A-Za-z0-9][A-Za-z0-9._/-]{0,62}=[^,\n]{0,190}$/

// What is wrong with a label, or undefined.
export function labelProblem (label: string): string | undefined {
  return LABEL.test(label) ? undefined : `a label is key=value with a key of letters, digits and ._/-, got ${JSON.stringify(label)}`
}

export function checkLabels (labels: string[]): string[] {
  if (labels.length > MAX_LABELS) throw BAD_PARAMS(`at most ${MAX_LABELS} labels`)
  for (const l of labels) {
    const problem = labelProblem(l)
    if (problem) throw BAD_PARAMS(problem)
  }
  return labels
}

// Labels as the local API carries them: "key=value,key=value".
export function splitLabels (list: string): string[] {
  return list.split(',').map(l => l.trim()).filter(Boolean)
}

// `over` replaces every label in `base` with one of its keys (a key may hold several values).
export function mergeLabels (base: string[], over: string[]): string[] {
  const keys = new Set(over.map(keyOf))
  return [...new Set([...base.filter(l => !keys.has(keyOf(l))), ...over])]
}

// `labels` without those named in `remove`: a key drops every label of that key, a "key=value"
// that label alone.
export function dropLabels (labels: string[], remove: string[]): string[] {
  const names = new Set(remove)
  return labels.filter(l => !names.has(l) && !names.has(keyOf(l)))
}

// One set of labels whatever their order.
export function sameLabels (a: string[], b: string[]): boolean {
  const set = new Set(a)
  return set.size === new Set(b).size && b.every(l => set.has(l))
}

function keyOf (label: string): string {
  return label.slice(0, label.indexOf('='))
}
