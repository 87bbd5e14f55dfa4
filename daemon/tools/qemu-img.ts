// qemu-img, wrapped once: conversion between raw volumes and image formats.

import { runOk } from './run.js'

const run = (args: string[], signal?: AbortSignal) => runOk('qemu-img', args, { signal, pkg: 'qemu-utils' })

export async function convert (from: string, fromFormat: string, to: string, toFormat: string, signal?: AbortSignal): Promise<void> {
  await run(['convert', '-f', fromFormat, '-O', toFormat, from, to], signal)
}
