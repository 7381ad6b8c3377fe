// Package termshot renders a terminal screen captured with its SGR
// attributes (tmux capture-pane -p -e) to a PNG image, for the README's
// screenshots. It understands what capture-pane emits: text, newlines and
// SGR sequences (ECMA-48 "Select Graphic Rendition": bold, faint,
// underline, reverse, the 16 colours, xterm's 256 and 24-bit colours).
// Other escape sequences are skipped.
//
// Text is drawn with DejaVu Sans Mono (Debian's fonts-dejavu-core) when it
// is installed, falling back to DejaVu Sans for glyphs it lacks, and to Go
// Mono when DejaVu is not there.
package termshot

import (
	"bytes"
	"fmt"
	"image"
	"image/color"
	"image/draw"
	"image/png"
	"os"
	"strconv"
	"strings"
	"unicode/utf8"

	"golang.org/x/image/font"
	"golang.org/x/image/font/gofont/gomono"
	"golang.org/x/image/font/gofont/gomonobold"
	"golang.org/x/image/font/opentype"
	"golang.org/x/image/font/sfnt"
	"golang.org/x/image/math/fixed"
)

// Dark theme colours.
var (
	defaultFG = color.RGBA{0xd8, 0xd8, 0xd8, 0xff}
	defaultBG = color.RGBA{0x1c, 0x1f, 0x24, 0xff}
	palette   = [16]color.RGBA{
		{0x2e, 0x34, 0x36, 0xff}, {0xef, 0x53, 0x50, 0xff}, {0x8b, 0xc3, 0x4a, 0xff}, {0xe5, 0xc0, 0x7b, 0xff},
		{0x61, 0xaf, 0xef, 0xff}, {0xc6, 0x78, 0xdd, 0xff}, {0x56, 0xb6, 0xc2, 0xff}, {0xd3, 0xd7, 0xcf, 0xff},
		{0x55, 0x57, 0x53, 0xff}, {0xff, 0x6e, 0x67, 0xff}, {0xa5, 0xd6, 0x6f, 0xff}, {0xf0, 0xd0, 0x8e, 0xff},
		{0x82, 0xc4, 0xff, 0xff}, {0xd9, 0x97, 0xeb, 0xff}, {0x7b, 0xd5, 0xe0, 0xff}, {0xee, 0xee, 0xec, 0xff},
	}
)

// cell is one character cell.
type cell struct {
	r        rune
	fg, bg   color.RGBA
	bold     bool
	faint    bool
	under    bool
	reverse  bool
	fgSet    bool
	bgSet    bool
	occupied bool
}

type attrs struct {
	fg, bg                      color.RGBA
	fgSet, bgSet                bool
	bold, faint, under, reverse bool
}

// parse lays out text with SGR sequences on a cols x rows grid.
func parse(data []byte, cols, rows int) [][]cell {
	grid := make([][]cell, rows)
	for i := range grid {
		grid[i] = make([]cell, cols)
	}
	var a attrs
	x, y := 0, 0
	for i := 0; i < len(data); {
		b := data[i]
		switch {
		case b == 0x1b && i+1 < len(data) && data[i+1] == '[':
			j := i + 2
			for j < len(data) && (data[j] < 0x40 || data[j] > 0x7e) {
				j++
			}
			if j < len(data) && data[j] == 'm' {
				a = sgr(a, string(data[i+2:j]))
			}
			i = j + 1
		case b == 0x1b && i+1 < len(data) && data[i+1] == ']':
			// OSC: skip to BEL or ST.
			j := i + 2
			for j < len(data) && data[j] != 0x07 && !(data[j] == 0x1b && j+1 < len(data) && data[j+1] == '\\') {
				j++
			}
			if j < len(data) && data[j] == 0x1b {
				j++
			}
			i = j + 1
		case b == '\n':
			x, y = 0, y+1
			i++
		case b < 0x20 || b == 0x7f:
			i++
		default:
			r, size := utf8.DecodeRune(data[i:])
			i += size
			if y < rows && x < cols {
				grid[y][x] = cell{r: r, fg: a.fg, bg: a.bg, fgSet: a.fgSet, bgSet: a.bgSet, bold: a.bold, faint: a.faint, under: a.under, reverse: a.reverse, occupied: true}
			}
			x++
		}
	}
	return grid
}

// sgr applies one SGR parameter list (ECMA-48 8.3.117; xterm's 38/48).
func sgr(a attrs, params string) attrs {
	if params == "" {
		return attrs{}
	}
	ps := strings.FieldsFunc(params, func(r rune) bool { return r == ';' || r == ':' })
	num := func(i int) int {
		if i >= len(ps) {
			return 0
		}
		n, _ := strconv.Atoi(ps[i])
		return n
	}
	for i := 0; i < len(ps); i++ {
		n := num(i)
		switch {
		case n == 0:
			a = attrs{}
		case n == 1:
			a.bold = true
		case n == 2:
			a.faint = true
		case n == 4:
			a.under = true
		case n == 7:
			a.reverse = true
		case n == 22:
			a.bold, a.faint = false, false
		case n == 24:
			a.under = false
		case n == 27:
			a.reverse = false
		case n >= 30 && n <= 37:
			a.fg, a.fgSet = palette[n-30], true
		case n == 39:
			a.fgSet = false
		case n >= 40 && n <= 47:
			a.bg, a.bgSet = palette[n-40], true
		case n == 49:
			a.bgSet = false
		case n >= 90 && n <= 97:
			a.fg, a.fgSet = palette[n-90+8], true
		case n >= 100 && n <= 107:
			a.bg, a.bgSet = palette[n-100+8], true
		case n == 38 || n == 48:
			var c color.RGBA
			switch num(i + 1) {
			case 5:
				c = xterm256(num(i + 2))
				i += 2
			case 2:
				c = color.RGBA{uint8(num(i + 2)), uint8(num(i + 3)), uint8(num(i + 4)), 0xff}
				i += 4
			default:
				continue
			}
			if n == 38 {
				a.fg, a.fgSet = c, true
			} else {
				a.bg, a.bgSet = c, true
			}
		}
	}
	return a
}

// xterm256 is xterm's 256-colour palette.
func xterm256(n int) color.RGBA {
	switch {
	case n < 16:
		return palette[max(n, 0)]
	case n < 232:
		n -= 16
		level := func(v int) uint8 {
			if v == 0 {
				return 0
			}
			return uint8(55 + v*40)
		}
		return color.RGBA{level(n / 36), level(n / 6 % 6), level(n % 6), 0xff}
	}
	v := uint8(8 + (min(n, 255)-232)*10)
	return color.RGBA{v, v, v, 0xff}
}

type fonts struct {
	regular, bold, fallback font.Face
	regularFont, boldFont   *sfnt.Font
}

func loadFace(paths []string, builtin []byte, size float64) (font.Face, *sfnt.Font, error) {
	data := builtin
	for _, p := range paths {
		if b, err := os.ReadFile(p); err == nil {
			data = b
			break
		}
	}
	f, err := opentype.Parse(data)
	if err != nil {
		return nil, nil, err
	}
	face, err := opentype.NewFace(f, &opentype.FaceOptions{Size: size, DPI: 72, Hinting: font.HintingFull})
	return face, f, err
}

const dejavu = "/usr/share/fonts/truetype/dejavu/"

func loadFonts(size float64) (*fonts, error) {
	var fs fonts
	var err error
	if fs.regular, fs.regularFont, err = loadFace([]string{dejavu + "DejaVuSansMono.ttf"}, gomono.TTF, size); err != nil {
		return nil, err
	}
	if fs.bold, fs.boldFont, err = loadFace([]string{dejavu + "DejaVuSansMono-Bold.ttf"}, gomonobold.TTF, size); err != nil {
		return nil, err
	}
	if fs.fallback, _, err = loadFace([]string{dejavu + "DejaVuSans.ttf"}, gomono.TTF, size); err != nil {
		return nil, err
	}
	return &fs, nil
}

func has(f *sfnt.Font, r rune) bool {
	var buf sfnt.Buffer
	i, err := f.GlyphIndex(&buf, r)
	return err == nil && i != 0
}

// Render draws the captured screen (cols x rows cells) as a PNG.
func Render(capture []byte, cols, rows int) ([]byte, error) {
	const size, pad = 15.0, 12
	fs, err := loadFonts(size)
	if err != nil {
		return nil, fmt.Errorf("termshot: loading fonts: %w", err)
	}
	m := fs.regular.Metrics()
	adv, _ := fs.regular.GlyphAdvance('M')
	cw := adv.Ceil()
	ch := (m.Ascent + m.Descent).Ceil() + 2
	img := image.NewRGBA(image.Rect(0, 0, cols*cw+2*pad, rows*ch+2*pad))
	draw.Draw(img, img.Bounds(), &image.Uniform{defaultBG}, image.Point{}, draw.Src)
	grid := parse(capture, cols, rows)
	for y, line := range grid {
		for x, c := range line {
			fg, bg := defaultFG, defaultBG
			if c.fgSet {
				fg = c.fg
			}
			if c.bgSet {
				bg = c.bg
			}
			if c.reverse {
				fg, bg = bg, fg
			}
			if c.faint {
				fg = blend(fg, bg)
			}
			px, py := pad+x*cw, pad+y*ch
			cellRect := image.Rect(px, py, px+cw, py+ch)
			if bg != defaultBG {
				draw.Draw(img, cellRect, &image.Uniform{bg}, image.Point{}, draw.Src)
			}
			if c.under {
				draw.Draw(img, image.Rect(px, py+ch-2, px+cw, py+ch-1), &image.Uniform{fg}, image.Point{}, draw.Src)
			}
			if !c.occupied || c.r == ' ' {
				continue
			}
			if r, ok := blocks(c.r); ok {
				draw.Draw(img, image.Rect(px, py+r.Min.Y*ch/8, px+cw, py+r.Max.Y*ch/8), &image.Uniform{shade(c.r, fg, bg)}, image.Point{}, draw.Src)
				continue
			}
			face, sf := fs.regular, fs.regularFont
			if c.bold {
				face, sf = fs.bold, fs.boldFont
			}
			if !has(sf, c.r) {
				face = fs.fallback
			}
			d := font.Drawer{Dst: img, Src: &image.Uniform{fg}, Face: face, Dot: fixed.P(px, py+1+m.Ascent.Ceil())}
			d.DrawString(string(c.r))
		}
	}
	var out bytes.Buffer
	if err := png.Encode(&out, img); err != nil {
		return nil, err
	}
	return out.Bytes(), nil
}

// blocks draws the progress bar's block characters as whole cells, so the
// bar has no gaps between cells.
func blocks(r rune) (image.Rectangle, bool) {
	switch r {
	case '█', '░', '▒', '▓':
		return image.Rect(0, 1, 1, 7), true
	}
	return image.Rectangle{}, false
}

func shade(r rune, fg, bg color.RGBA) color.RGBA {
	switch r {
	case '░':
		return mix(fg, bg, 0.25)
	case '▒':
		return mix(fg, bg, 0.5)
	case '▓':
		return mix(fg, bg, 0.75)
	}
	return fg
}

func blend(fg, bg color.RGBA) color.RGBA { return mix(fg, bg, 0.55) }

func mix(a, b color.RGBA, wa float64) color.RGBA {
	f := func(x, y uint8) uint8 { return uint8(float64(x)*wa + float64(y)*(1-wa)) }
	return color.RGBA{f(a.R, b.R), f(a.G, b.G), f(a.B, b.B), 0xff}
}
