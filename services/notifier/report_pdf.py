"""A review report as an A4 PDF (fpdf2), with the DejaVu Sans font embedded: it has every
Vietnamese letter and tone mark, and the reader's machine may have no such font."""

from __future__ import annotations

from pathlib import Path

from fpdf import FPDF

from services.notifier.reports import (
    TABLE_ROWS,
    ZONE,
    Figures,
    Language,
    ReviewReport,
    _value,
    heading,
    label,
)

FONTS = Path(__file__).parent / "fonts"
BLUE, PALE, RED = (31, 78, 121), (157, 183, 213), (122, 46, 31)


def render_pdf(report: ReviewReport, lang: Language = "vi") -> bytes:
    pdf = FPDF(orientation="portrait", unit="mm", format="A4")
    pdf.set_auto_page_break(auto=True, margin=15)
    pdf.add_font("DejaVu", "", str(FONTS / "DejaVuSans.ttf"))
    pdf.add_font("DejaVu", "B", str(FONTS / "DejaVuSans-Bold.ttf"))
    pdf.set_title(heading(report, lang)[0])
    pdf.set_creator("giapranh")
    pdf.add_page()
    names = {unit.code: unit.name for unit in report.units}
    width = pdf.epw

    if lang == "vi":
        pdf.set_font("DejaVu", "B", 10)
        pdf.cell(width, 5, "CỘNG HÒA XÃ HỘI CHỦ NGHĨA VIỆT NAM", align="C",
                 new_x="LMARGIN", new_y="NEXT")
        pdf.set_font("DejaVu", "", 10)
        pdf.cell(width, 5, "Độc lập – Tự do – Hạnh phúc", align="C",
                 new_x="LMARGIN", new_y="NEXT")
        pdf.ln(4)
    title, scope_line, period_line = heading(report, lang)
    pdf.set_font("DejaVu", "B", 13)
    pdf.multi_cell(width, 7, title, align="C", new_x="LMARGIN", new_y="NEXT")
    pdf.set_font("DejaVu", "", 10)
    pdf.multi_cell(width, 5, scope_line, align="C", new_x="LMARGIN", new_y="NEXT")
    pdf.multi_cell(width, 5, period_line, align="C", new_x="LMARGIN", new_y="NEXT")
    pdf.ln(2)
    for unit in report.units:
        extra = f" ({label('includes', lang)} {', '.join(unit.includes)})" if unit.includes else ""
        pdf.multi_cell(width, 5, f"{unit.code}: {unit.name}{extra}",
                       new_x="LMARGIN", new_y="NEXT")
    pdf.ln(3)

    # Chart: alerts per direction, this period beside the previous one.
    rows = [(f"{names.get(d.from_unit, d.from_unit)} → {names.get(d.to_unit, d.to_unit)}",
             d.current.alerts, d.previous.alerts) for d in report.directions]
    pdf.set_font("DejaVu", "B", 10)
    pdf.cell(width, 6, label("chart_directions", lang), new_x="LMARGIN", new_y="NEXT")
    most = max([max(a, b) for _, a, b in rows] + [1])
    label_width, bar_room = 80, width - 80 - 15
    pdf.set_font("DejaVu", "", 8)
    for name, current, previous in rows:
        y = pdf.get_y()
        if y > pdf.h - 30:
            pdf.add_page()
            y = pdf.get_y()
        pdf.set_xy(pdf.l_margin, y)
        pdf.cell(label_width, 4, name[:60])
        for offset, value, colour in ((0, current, BLUE), (4.5, previous, PALE)):
            pdf.set_fill_color(*colour)
            length = bar_room * value / most
            if length:
                pdf.rect(pdf.l_margin + label_width, y + offset, length, 4, style="F")
            pdf.set_xy(pdf.l_margin + label_width + length + 1, y + offset)
            pdf.cell(12, 4, str(value))
        pdf.set_y(y + 10)
    pdf.ln(2)

    _table(pdf, label("totals", lang), [(label("this_period", lang), report.totals),
                                         (label("previous", lang), report.previous_totals)],
           lang)
    for d in report.directions:
        caption = (f"{label('direction', lang)}: {names.get(d.from_unit, d.from_unit)} → "
                   f"{names.get(d.to_unit, d.to_unit)}")
        columns = [(label("this_period", lang), d.current), (label("previous", lang),
                                                            d.previous)]
        columns += list(d.by_month.items())[:4]
        _table(pdf, caption, columns, lang)
    pdf.set_font("DejaVu", "", 8)
    pdf.cell(width, 5, f"{label('generated', lang)}: "
             f"{report.generated_at.astimezone(ZONE):%d/%m/%Y %H:%M}")
    return bytes(pdf.output())


def _table(pdf: FPDF, caption: str, columns: list[tuple[str, Figures]],
           lang: Language) -> None:
    if pdf.get_y() > pdf.h - 100:
        pdf.add_page()
    pdf.set_font("DejaVu", "B", 9)
    pdf.multi_cell(pdf.epw, 5, caption, new_x="LMARGIN", new_y="NEXT")
    pdf.set_font("DejaVu", "", 7)
    first = 62
    other = (pdf.epw - first) / max(1, len(columns))
    pdf.set_fill_color(230, 236, 243)
    pdf.cell(first, 5, "", border=1, fill=True)
    for name, _ in columns:
        pdf.cell(other, 5, name, border=1, align="C", fill=True)
    pdf.ln()
    for row in TABLE_ROWS:
        pdf.cell(first, 4.5, label(row, lang), border=1)
        for _, figures in columns:
            pdf.cell(other, 4.5, _value(figures, row), border=1, align="R")
        pdf.ln()
    pdf.ln(3)
