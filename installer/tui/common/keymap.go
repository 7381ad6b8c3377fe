package common

import "charm.land/bubbles/v2/key"

// KeyMap holds every key binding of the TUI. Everything is reachable from
// the keyboard (no mouse), with keys that pass through SSH sessions and
// terminal multiplexers (no function keys needed).
type KeyMap struct {
	Up, Down     key.Binding
	PageUp       key.Binding
	PageDown     key.Binding
	Top, Bottom  key.Binding
	Select       key.Binding
	Edit         key.Binding
	Toggle       key.Binding
	Done         key.Binding
	Cancel       key.Binding
	Back         key.Binding
	Quit         key.Binding
	Interrupt    key.Binding
	Help         key.Binding
	Save         key.Binding
	Plan         key.Binding
	History      key.Binding
	Add          key.Binding
	Remove       key.Binding
	PickFile     key.Binding
	Apply        key.Binding
	Yes, No      key.Binding
	Rollback     key.Binding
	AllNodes     key.Binding
	NextNode     key.Binding
	PrevNode     key.Binding
	New          key.Binding
	ShowHidden   key.Binding
	FollowToggle key.Binding
}

// DefaultKeyMap returns the key bindings.
func DefaultKeyMap() *KeyMap {
	b := func(keys []string, k, desc string) key.Binding {
		return key.NewBinding(key.WithKeys(keys...), key.WithHelp(k, desc))
	}
	return &KeyMap{
		Up:           b([]string{"up", "k"}, "↑/k", "up"),
		Down:         b([]string{"down", "j"}, "↓/j", "down"),
		PageUp:       b([]string{"pgup", "ctrl+u"}, "pgup", "page up"),
		PageDown:     b([]string{"pgdown", "ctrl+d"}, "pgdn", "page down"),
		Top:          b([]string{"home", "g"}, "g", "top"),
		Bottom:       b([]string{"end", "G"}, "G", "bottom"),
		Select:       b([]string{"enter"}, "enter", "select"),
		Edit:         b([]string{"enter"}, "enter", "edit"),
		Toggle:       b([]string{"space", "left", "right"}, "space", "toggle"),
		Done:         b([]string{"enter", "tab"}, "enter", "done"),
		Cancel:       b([]string{"esc"}, "esc", "cancel"),
		Back:         b([]string{"esc"}, "esc", "back"),
		Quit:         b([]string{"q", "ctrl+c"}, "q", "quit"),
		Interrupt:    b([]string{"ctrl+c"}, "ctrl+c", "stop"),
		Help:         b([]string{"?"}, "?", "more keys"),
		Save:         b([]string{"s", "ctrl+s"}, "s", "save"),
		Plan:         b([]string{"p"}, "p", "save & plan"),
		History:      b([]string{"h"}, "h", "history"),
		Add:          b([]string{"a"}, "a", "add node"),
		Remove:       b([]string{"d", "delete"}, "d", "remove node"),
		PickFile:     b([]string{"f"}, "f", "pick file"),
		Apply:        b([]string{"a", "enter"}, "a", "apply…"),
		Yes:          b([]string{"y", "Y"}, "y", "yes"),
		No:           b([]string{"n", "N", "esc"}, "n", "no"),
		Rollback:     b([]string{"r"}, "r", "roll back"),
		AllNodes:     b([]string{"a"}, "a", "log: all nodes"),
		NextNode:     b([]string{"down", "j", "tab"}, "↓/j", "next node"),
		PrevNode:     b([]string{"up", "k", "shift+tab"}, "↑/k", "prev node"),
		New:          b([]string{"n"}, "n", "new profile"),
		ShowHidden:   b([]string{"."}, ".", "hidden files"),
		FollowToggle: b([]string{"F"}, "F", "follow log"),
	}
}
