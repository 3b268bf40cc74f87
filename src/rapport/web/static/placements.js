// Placement editor: add a variant row (a copy of <template id="variant-template">) or remove one.
(function () {
  "use strict";
  document.addEventListener("click", function (e) {
    if (e.target.id === "add-variant") {
      var row = document.getElementById("variant-template").content.firstElementChild.cloneNode(true);
      document.querySelector("#variants tbody").appendChild(row);
    } else if (e.target.classList && e.target.classList.contains("remove-variant")) {
      e.target.closest("tr").remove();
    }
  });
})();
