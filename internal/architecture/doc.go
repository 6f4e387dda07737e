// Package architecture has no code: its tests pin the layering rules of
// STYLE.md (imports point inward; the data plane never reaches the store or
// the CA; leaves stay leaves) and that every package documents itself.
package architecture
